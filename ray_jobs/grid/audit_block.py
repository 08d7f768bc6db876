"""The grid's `audit` block (what to audit, see ray_jobs.grid.audit for the units it becomes), validated with
the grid's own entry machinery: its defenses are swept and checked exactly like the grid's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from benchmark.audit.canaries import KINDS
from benchmark.audit.scores import SCORES
from benchmark.params import Param, check_params
from ray_jobs.grid.entries import Checker, DefenseSetting, parse_defenses

if TYPE_CHECKING:
    from ray_jobs.grid.spec import Grid

AUDIT_PARAMS: dict[str, Param] = {
    "defenses": Param(list, default=["none"], help="training-side defense entries, swept like the grid's"),
    "archs": Param(list, default=[], item=str, help="victim architectures to audit (default: all)"),
    "kinds": Param(list, default=["natural", "permuted"], item=str, choices=KINDS),
    "scores": Param(list, default=list(SCORES), item=str, choices=SCORES),
    "confidence": Param(float, default=0.95, low=0.5, high=1.0, high_open=True),
    "placebo": Param(bool, default=True, help="audit, next to each audited model, the same recipe with every "
                     "canary excluded (the null check)"),
    "reference": Param(str, default="same_defense", choices=("same_defense", "grid"),
                       help="calibration model: the victim trained with the audited defense (trained for the audit "
                            "when the grid lacks it), or only models the grid trains anyway (else no calibrated score)"),
}


@dataclass(frozen=True)
class AuditSpec:
    defenses: tuple[DefenseSetting, ...]
    archs: tuple[str, ...]
    kinds: tuple[str, ...]
    scores: tuple[str, ...]
    confidence: float
    placebo: bool
    reference: str = "same_defense"


def parse_audit(check: Checker, raw: dict[str, Any], grid: Grid) -> AuditSpec:
    """The validated `audit` block of a grid whose other keys are already validated."""
    values = check(check_params, "audit", AUDIT_PARAMS, raw)
    counts = {grid.datasets[s.dataset].adapter.num_classes for s in grid.settings}
    defenses = parse_defenses(check, check.items("audit.defenses", values["defenses"], object), counts)
    for d in defenses:
        if d.output_side:
            raise check.fail("audit.defenses", f"{d.label} is an output defense: an audit tests how a model is "
                             "trained (audit the release through the grid's attacks instead)")
    archs = tuple(values["archs"]) or grid.victim_archs
    for arch in archs:
        if arch not in grid.victim_archs:
            raise check.fail("audit.archs", f"{arch!r} is not a victim architecture ({', '.join(grid.victim_archs)})")
    for key in ("kinds", "scores"):
        if not values[key] or len(set(values[key])) != len(values[key]):
            raise check.fail(f"audit.{key}", f"expected distinct values, got {values[key]}")
    sizes = {s.kind: grid.split_spec(s).canaries for s in grid.settings}
    if not any(sizes.values()):
        raise check.fail("audit", "no setting has canaries: set splits.<dependent|independent>.canaries")
    for kind, n in sizes.items():
        if 0 < n < 2 * len(values["kinds"]):
            raise check.fail(f"splits.{kind}.canaries", f"{n} canaries cannot give each of {len(values['kinds'])} "
                             "kinds one guess per side: need at least 2 per kind")
    return AuditSpec(defenses, archs, tuple(values["kinds"]), tuple(values["scores"]), values["confidence"],
                     values["placebo"], values["reference"])
