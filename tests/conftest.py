"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """synthetic_tree(layout, n_train=6, n_val=4, size=(64, 128), seed=0) -> root of a synthetic dataset,
    written once per session per argument set. Treat it as read-only: copy it before breaking it."""
    from benchmark.data.synth import ensure_synthetic_dataset

    def make(layout: str, n_train: int = 6, n_val: int = 4, size: tuple[int, int] = (64, 128), seed: int = 0) -> Path:
        root = tmp_path_factory.getbasetemp() / "synthetic" / f"{layout}-{n_train}-{n_val}-{size[0]}x{size[1]}-{seed}"
        return ensure_synthetic_dataset(layout, root, n_train, n_val, size, seed)

    return make


@pytest.fixture(scope="session")
def small_cityscapes(synthetic_tree: Callable[..., Path]) -> tuple[Path, list[str]]:
    """(root, the 10 train-split ids) of a small synthetic Cityscapes tree, for model tests to slice."""
    from benchmark.data.adapters import get_adapter

    root = synthetic_tree("cityscapes", n_train=10, n_val=4)
    return root, [s.id for s in get_adapter("cityscapes").list_samples(root, "train")]
