"""Training steps: segleak's Lightning path vs the same model, loss, optimiser and schedule in a plain loop."""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from ray_jobs.measure.perf.common import NUM_CLASSES, Row, Sizes, torch_threads, verdict


class RandomScenes(torch.utils.data.Dataset):
    """In-memory images (0..255) and labels shaped like `SegmentationDataset` items: no decoding noise."""

    def __init__(self, n: int, hw: tuple[int, int], seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, *hw, generator=gen) * 255
        self.labels = torch.randint(0, NUM_CLASSES, (n, *hw), generator=gen)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "id": f"img{i}", "index": torch.tensor(i)}


def _loader(data: RandomScenes, batch: int) -> torch.utils.data.DataLoader:
    from benchmark.models.data import collate_samples

    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False, collate_fn=collate_samples)


def _step_times(stamps: list[float]) -> list[float]:
    """Seconds between successive batches handed to the step; the first (warm-up) step is dropped, and the
    last has no successor: so neither the first step nor the end-of-fit teardown counts."""
    return [b - a for a, b in zip(stamps[1:-1], stamps[2:])]


def lightning_steps(arch: str, data: RandomScenes, batch: int, lr: float) -> tuple[list[float], float]:
    """segleak's Lightning path (SegmentationModule + a Trainer set up as train_model does): step times, set-up."""
    import pytorch_lightning as pl

    from benchmark.defenses import build_defense
    from benchmark.models.lightning_module import SegmentationModule

    stamps: list[float] = []

    class Stamp(pl.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            stamps.append(time.perf_counter())

    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)  # banner lines
    torch.manual_seed(0)
    module = SegmentationModule(arch, build_defense("none"), num_classes=NUM_CLASSES, optimizer="adamw", lr=lr,
                                eval_names=())
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, precision="32-true", deterministic=True,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Stamp()])
    started = time.perf_counter()
    with warnings.catch_warnings():  # "few dataloader workers": in-memory data needs none
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=_loader(data, batch))
    return _step_times(stamps), stamps[0] - started


def plain_steps(arch: str, data: RandomScenes, batch: int, lr: float) -> list[float]:
    """The same model, loss, optimiser and LR schedule in a hand-written PyTorch loop: step times."""
    from benchmark.models.builder import build_segmentor
    from benchmark.models.lightning_module import SegmentationNet, per_image_ce

    torch.manual_seed(0)
    net = SegmentationNet(build_segmentor(arch)).train()
    loader = _loader(data, batch)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=len(loader), power=0.9)
    stamps, losses = [], []
    with deterministic_algorithms():
        for b in loader:
            stamps.append(time.perf_counter())
            optimizer.zero_grad()
            loss = per_image_ce(net(b["image"])[0], b["label"]).mean()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    return _step_times(stamps)


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """What `deterministic=True` makes Lightning set, so the plain loop runs the same kernels."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def bench_training(sizes: Sizes, arch: str = "pspnet_tiny", lr: float = 3e-3) -> dict[str, Any]:
    """Lightning vs plain per-step time, runs alternated; the Trainer's one-off set-up is reported apart."""
    data = RandomScenes(sizes.train_batch * (sizes.train_steps + 2), sizes.train_hw)
    light, plain, setup = [], [], []
    with torch_threads(1):
        for r in range(sizes.train_repeats):
            for which in (("lightning", "plain") if r % 2 == 0 else ("plain", "lightning")):
                if which == "plain":
                    plain += plain_steps(arch, data, sizes.train_batch, lr)
                else:
                    steps, s = lightning_steps(arch, data, sizes.train_batch, lr)
                    light += steps
                    setup.append(s)
    lm, pm = statistics.median(light), statistics.median(plain)
    return {"arch": arch, "image_size": list(sizes.train_hw), "batch": sizes.train_batch, "threads": 1,
            "steps_per_run": sizes.train_steps, "runs": sizes.train_repeats,
            "lightning_step_s": lm, "plain_step_s": pm, "overhead": lm / pm - 1,
            "lightning_setup_s": statistics.median(setup)}


def training_rows(train: dict[str, Any]) -> list[Row]:
    return [
        Row(f"Lightning step vs plain loop ({train['arch']}, bs {train['batch']})",
            f"{train['lightning_step_s'] * 1e3:.0f} vs {train['plain_step_s'] * 1e3:.0f} ms (+{train['overhead']:.1%})",
            "< +10%", verdict(train["overhead"] < 0.10)),
        Row("Lightning one-off set-up (fit -> first step)", f"{train['lightning_setup_s'] * 1e3:.0f} ms", "-", "info"),
    ]

