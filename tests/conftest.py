"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """synthetic_tree(layout, n_train=6, n_val=4, size=(64, 128), seed=0, group_size=1) -> root of a synthetic
    dataset, written once per session per argument set. Treat it as read-only: copy it before breaking it.
    `layout` is a dataset name or an adapter spec (a dict, e.g. the generic dataset with its classes)."""
    from benchmark.data.synth import SynthSpec, ensure_synthetic_dataset

    def make(layout, n_train: int = 6, n_val: int = 4, size: tuple[int, int] = (64, 128), seed: int = 0,
             group_size: int = 1) -> Path:
        spec = SynthSpec.of(layout, n_train=n_train, n_val=n_val, size=list(size), seed=seed, group_size=group_size)
        name = f"{spec.dataset['type']}-{abs(hash(str(spec.dataset))) % 10**6}-{n_train}-{n_val}-{size[0]}x{size[1]}-{seed}-{group_size}"
        return ensure_synthetic_dataset(spec, tmp_path_factory.getbasetemp() / "synthetic" / name)

    return make


@pytest.fixture(scope="session")
def small_cityscapes(synthetic_tree: Callable[..., Path]) -> tuple[Path, list[str]]:
    """(root, the 10 train-split ids) of a small synthetic Cityscapes tree, for model tests to slice."""
    from benchmark.data.adapters import get_adapter

    root = synthetic_tree("cityscapes", n_train=10, n_val=4)
    return root, [s.id for s in get_adapter("cityscapes").list_samples(root, "train")]


def fit_model(cfg, root, members, heldout, out, defense: str = "none", params: dict | None = None, **kw):
    """`train_model` on the synthetic Cityscapes tree with a registered defense (tests' shorthand)."""
    from benchmark.data.adapters import get_adapter
    from benchmark.defenses import build_defense
    from benchmark.models.train import train_model

    return train_model(cfg, build_defense(defense, params, side="training"), get_adapter("cityscapes"), root,
                       members, heldout, out, **kw)
