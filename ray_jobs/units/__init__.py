"""The kinds of work unit: one module per kind (its typed config, run, progress line, MLflow logging and
resource stage), registered in `UNIT_KINDS`; the scheduler and the reporter never branch on a kind."""

from ray_jobs.units.base import UNIT_KINDS, UnitCrashed, UnitKind, UnitRefused, execute

__all__ = ["UNIT_KINDS", "UnitCrashed", "UnitKind", "UnitRefused", "execute"]
