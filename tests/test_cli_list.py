"""`segleak list` prints what the registries hold (so a component registered in its own file is listed the
moment it exists), with its parameters and the first sentence of its docstring."""

from __future__ import annotations

import pytest

from benchmark.cli import LISTABLE, catalogue, main
from benchmark.models.builder import list_architectures
from benchmark.registry import ATTACKS, DATASETS, DEFENSES
from ray_jobs.units import UNIT_KINDS


@pytest.mark.parametrize("what, names", [("attacks", ATTACKS.names), ("defenses", DEFENSES.names),
                                         ("datasets", DATASETS.names), ("unit-kinds", UNIT_KINDS.names),
                                         ("archs", list_architectures)])
def test_every_registered_component_is_listed_with_a_doc(what, names, capsys):
    rows = catalogue(what)
    assert [name for name, _, _ in rows] == list(names())
    assert all(doc for _, _, doc in rows), [name for name, _, doc in rows if not doc]
    assert main(["list", what]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in names())


def test_parameters_are_shown_with_their_defaults():
    rows = {name: params for name, params, _ in catalogue("defenses")}
    assert "side=training" in rows["dp_sgd"] and "max_grad_norm=REQUIRED" in rows["dp_sgd"]
    assert set(LISTABLE) == {"attacks", "defenses", "datasets", "archs", "unit-kinds"}


def test_an_unknown_kind_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["list", "gizmos"])
    assert info.value.code == 2 and "invalid choice: 'gizmos'" in capsys.readouterr().err
