"""One visual vocabulary for the whole report, so a reader learns it once: the leakage scale of the tables,
one colour per defense and one line style per attack in every figure, and the screen and paper figure styles.

Colours come from matplotlib's colormaps. Defense and attack colours follow the registries' order, not the
data, so `gaussian` has the same colour in every figure of every invocation; the settings of one defense
(`gaussian σ=0.1`, `σ=0.5`) are shades of that colour.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import matplotlib
from matplotlib import colormaps
from matplotlib.colors import LinearSegmentedColormap, to_hex, to_rgba


SCREEN, PAPER = "screen", "paper"
STYLES = (SCREEN, PAPER)
# text width of one column and of the full page of a two-column paper (IEEE / ACM templates), in inches
ONE_COLUMN_IN, TWO_COLUMN_IN = 3.5, 7.16
_COMMON = {"svg.fonttype": "none", "pdf.fonttype": 42, "axes.titlesize": "medium", "legend.framealpha": 0.85}
RC = {
    SCREEN: {**_COMMON, "font.size": 10},
    PAPER: {**_COMMON, "font.size": 7, "axes.labelsize": 7, "xtick.labelsize": 6, "ytick.labelsize": 6,
            "legend.fontsize": 6, "lines.linewidth": 1.0, "lines.markersize": 4, "axes.linewidth": 0.6},
}

# The leakage scale: AUC 0.5 (chance) and below is white, 1.0 the darkest red used. The top of "Reds" is cut
# off (LEAK_TOP) so black text stays legible on every shade, which is why the text never changes colour.
LEAK_CMAP, LEAK_TOP = "Reds", 0.6
UNDEFENDED = "none"
_UNDEFENDED_COLOUR = "0.15"
_DEFENSE_PALETTE = colormaps["tab10"].colors + colormaps["tab20b"].colors[::4]
_ATTACK_PALETTE = colormaps["Dark2"].colors
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = "osD^vP*X"


def leak_colour(auc: float) -> str:
    """The table background of an AUC on the leakage scale (text on it is black)."""
    t = min(max((auc - 0.5) / 0.5, 0.0), 1.0)
    return to_hex(colormaps[LEAK_CMAP](LEAK_TOP * t))


def _order(registry_names: Iterable[str], names: Iterable[str]) -> list[str]:
    """Registered names first in the registry's order, then unknown ones alphabetically."""
    known = list(registry_names)
    return known + sorted(set(names) - set(known))


def _defense_order() -> list[str]:
    from benchmark.registry import DEFENSES

    return sorted(DEFENSES.names(), key=lambda name: DEFENSES.lookup(name).order)


def _attack_order() -> list[str]:
    from benchmark.registry import ATTACKS

    return list(ATTACKS.names())


@dataclass(frozen=True)
class AttackStyle:
    color: tuple
    ls: str
    marker: str

    def line(self) -> dict[str, object]:
        return {"color": self.color, "ls": self.ls}


@dataclass(frozen=True)
class Palette:
    """Colours of defenses (families and their settings) and line styles of attacks for one report."""

    families: dict[str, tuple]
    defenses: dict[str, tuple]  # defense label -> colour
    attacks: dict[str, AttackStyle]  # attack label -> style

    def family(self, defense: str) -> tuple:
        return self.families.get(defense, to_rgba(_UNDEFENDED_COLOUR))

    def defense(self, label: str) -> tuple:
        return self.defenses[label]

    def attack(self, label: str) -> AttackStyle:
        return self.attacks[label]


def _shades(base: tuple, n: int) -> list[tuple]:
    """n shades of one colour, lighter to darker, the middle one the colour itself."""
    if n == 1:
        return [base]
    ramp = LinearSegmentedColormap.from_list("shade", ["white", base, "black"])
    return [ramp(0.3 + 0.4 * i / (n - 1)) for i in range(n)]


def palette(defense_labels: Iterable[tuple[str, str, object]], attack_labels: Iterable[tuple[str, str]]) -> Palette:
    """The report's palette from every (defense, defense params, sort rank) and (attack, attack label) it shows."""
    labels = sorted(set(defense_labels), key=lambda d: (d[2], d[0]))
    order = [name for name in _order(_defense_order(), {d[0] for d in labels}) if name != UNDEFENDED]
    families = {name: _DEFENSE_PALETTE[i % len(_DEFENSE_PALETTE)] for i, name in enumerate(order)}
    families[UNDEFENDED] = to_rgba(_UNDEFENDED_COLOUR)
    defenses: dict[str, tuple] = {}
    for family in {d[0] for d in labels}:
        mine = [d[1] for d in labels if d[0] == family]
        defenses.update(zip(mine, _shades(families[family], len(mine))))
    attacks: dict[str, AttackStyle] = {}
    pairs = sorted(set(attack_labels))
    attack_order = _order(_attack_order(), {a for a, _ in pairs})
    for attack in attack_order:
        mine = [label for a, label in pairs if a == attack]
        colour = _ATTACK_PALETTE[attack_order.index(attack) % len(_ATTACK_PALETTE)]
        for i, label in enumerate(mine):
            attacks[label] = AttackStyle(colour, LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)])
    return Palette(families, defenses, attacks)


def table_palette(table) -> Palette:  # table: analysis.aggregate's frame
    """The palette of everything an aggregated table holds."""
    if table.empty:
        return palette([], [])
    defenses = zip(table["defense"], table["defense_label"], table["defense_rank"])
    attacks = zip(table["attack"], table["attack_label"]) if "attack" in table else []
    return palette(defenses, attacks)


_STYLE: ContextVar[str] = ContextVar("figure_style", default=SCREEN)


def figure_size(width: float, height: float) -> tuple[float, float]:
    """In the screen style figures keep their size; in the paper style they are scaled to one column (those
    up to 6 in wide on screen) or to the full two-column width, keeping their aspect ratio."""
    if _STYLE.get() == SCREEN:
        return width, height
    target = ONE_COLUMN_IN if width <= 6 else TWO_COLUMN_IN
    return target, height * target / width


@contextmanager
def figure_style(style: str) -> Iterator[None]:
    """matplotlib's settings for `style` while figures are drawn and saved."""
    if style not in STYLES:
        from benchmark.errors import SegleakError

        raise SegleakError(f"--style: expected one of {', '.join(STYLES)}, got {style!r}")
    token = _STYLE.set(style)
    try:
        with matplotlib.rc_context(RC[style]):
            yield
    finally:
        _STYLE.reset(token)
