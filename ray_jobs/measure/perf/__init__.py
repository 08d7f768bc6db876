"""`make bench`: segleak's performance figures, one module per thing measured.

The project's machines are small and shared, so no absolute time is meaningful on its own: most figures
compare two variants of the same work measured in interleaved repetitions (median of several), so that load
from other processes hits both alike; the driver's cost per unit is CPU time, which other processes' load
barely changes. Targets are printed next to the figures; nothing here asserts a timing. `--quick` shrinks
every size and skips the smoke run (for tests).

Sections: `features` (attack inputs), `training` (Lightning vs a plain loop), `dp` (DP-SGD steps),
`planning` (units shared between cells), `smoke` (the smoke profile end to end), `release` (bytes per
released image), `driver` (the driver's CPU per unit at 1k-100k units), `cli` (the table and the JSON).
"""
