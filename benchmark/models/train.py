"""Train one segmentation model on exactly its member list, evaluate it, and save it.

`train_model` is what the grid calls for every victim, shadow and reference model. It is deterministic on CPU
for a fixed seed (seeded global RNGs, a seeded loader generator, no workers, deterministic algorithms), writes
`out_dir/model.pt` (a plain dict, loadable with `torch.load(weights_only=True)`) and `out_dir/metrics.json`.
mIoU is measured once after training on the members ("train") and on the held-out ids, in eval mode.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from benchmark.data.adapters import DatasetAdapter, Sample
from benchmark.defenses.base import TrainingDefense
from benchmark.errors import SegleakError
from benchmark.io import write_atomic
from benchmark.models import dp
from benchmark.models.builder import build_segmentor
from benchmark.models.data import SegmentationDataModule
from benchmark.models.lightning_module import OPTIMIZERS, SegmentationModule
from benchmark.needs import REFERENCE_SET, TEACHER
from benchmark.params import Param, check_params

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "32", "16", "bf16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")

# The grid's `train` block: every model of a grid trains with these settings.
TRAIN_PARAMS: dict[str, Param] = {
    "epochs": Param(int, low=1),
    "batch_size": Param(int, low=1),
    "lr": Param(float, low=0.0, low_open=True),
    "optimizer": Param(str, default="adamw", choices=OPTIMIZERS),
    "weight_decay": Param(float, default=0.0, low=0.0),
    "image_size": Param(list, default=None, nullable=True, item=int, length=2, help="(H, W) every image is resized to"),
    "precision": Param(str, default="32-true", choices=PRECISIONS),
    "accelerator": Param(str, default="auto", choices=ACCELERATORS),
    "num_workers": Param(int, default=0, low=0, help="data-loading processes (feed a GPU)"),
    # GPU speed (measured on an H200 by `make gpu-check`, README Performance): cuDNN autotuning instead of
    # deterministic kernels (2-5x on UPerNet/SegFormer), channels-last (DeepLabV3+ 15% -> 28% MFU),
    # torch.compile of the training forward (-> 34% MFU, about 80 s of compilation per model)
    "deterministic": Param(bool, default=None, nullable=True,
                           help="bitwise-reproducible kernels; default: on the CPU yes, on a GPU no (autotuned)"),
    "channels_last": Param(bool, default=True, help="channels-last tensors on a GPU (ignored on the CPU and under DP)"),
    "compile": Param(bool, default=False, help="torch.compile the training forward on a GPU (not under DP)"),
}


@dataclass(frozen=True)
class TrainConfig:
    """One model's training settings (the grid's `train` block, validated by `TRAIN_PARAMS`)."""

    arch: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    image_size: tuple[int, int] | None = None
    seed: int = 0
    precision: str = "32-true"
    accelerator: str = "auto"
    num_workers: int = 0
    deterministic: bool | None = None
    channels_last: bool = True
    compile: bool = False
    num_threads: int | None = 1

    @classmethod
    def of(cls, arch: str, seed: int, train: dict[str, Any], num_threads: int | None = 1) -> TrainConfig:
        values = check_params("train", TRAIN_PARAMS, train)
        if values.get("image_size") is not None:
            if min(values["image_size"]) < 1:
                raise SegleakError(f"train.image_size must be positive, got {values['image_size']}")
            values["image_size"] = tuple(values["image_size"])
        return cls(arch=arch, seed=seed, num_threads=num_threads, **values)


@dataclass
class TrainResult:
    metrics: dict[str, float]
    checkpoint: Path
    seen_train_ids: list[str]
    curves: list[dict[str, float]] = field(default_factory=list)  # per epoch: training loss, validation metrics


def select_samples(adapter: DatasetAdapter, root: Path, ids: Sequence[str], what: str) -> list[Sample]:
    """The samples of `ids` in the given order; an id missing from the dataset is an error naming it."""
    by_id = {s.id: s for s in adapter.list_samples(Path(root))}
    missing = [i for i in ids if i not in by_id]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SegleakError(f"{what} id {missing[0]!r}{more} is not in the {adapter.name} dataset at {root}")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if list(ids).count(i) > 1)
        raise SegleakError(f"{what} id {dup!r} is listed twice")
    return [by_id[i] for i in ids]


def on_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _deterministic_flag(cfg: TrainConfig) -> bool | str:
    """Strict on the CPU (bitwise reproducible); on a GPU autotuned unless asked, and then "warn": some
    kernels (bilinear upsampling backward) have no deterministic version."""
    if not on_gpu(cfg.accelerator):
        return True if cfg.deterministic is None else cfg.deterministic
    return "warn" if cfg.deterministic else False


def train_model(
    cfg: TrainConfig,
    defense: TrainingDefense,
    adapter: DatasetAdapter,
    root: Path,
    train_ids: Sequence[str],
    heldout_ids: Sequence[str],
    out_dir: Path,
    *,
    reference_ids: Sequence[str] = (),
    teacher: Path | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train `cfg.arch` with `defense` on `train_ids` of the dataset at `root`, evaluate on the members and
    `heldout_ids`, save. `reference_ids` (non-members) and `teacher` (a checkpoint) feed defenses that need them."""
    if not train_ids:
        raise SegleakError("train_ids is empty: a model needs at least one member")
    for other, what in ((heldout_ids, "held out"), (reference_ids, "in the reference set")):
        overlap = set(train_ids) & set(other)
        if overlap:
            raise SegleakError(f"id {sorted(overlap)[0]!r} is both a member and {what}")
    missing = {REFERENCE_SET: not reference_ids, TEACHER: teacher is None}
    for need in defense.needs:
        if missing[need]:
            raise SegleakError(f"defense {defense.name!r} needs a {need.replace('_', ' ')}, and none was given")
    data = SegmentationDataModule(
        adapter, select_samples(adapter, root, train_ids, "train"),
        {"train": select_samples(adapter, root, train_ids, "train"),
         "heldout": select_samples(adapter, root, heldout_ids, "held-out")},
        batch_size=cfg.batch_size, image_size=cfg.image_size, seed=cfg.seed, num_workers=cfg.num_workers,
        reference=select_samples(adapter, root, reference_ids, "reference"), teacher=teacher,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    started = time.monotonic()
    if not progress:  # Lightning's banner lines (GPU available, tips) would flood a grid's logs
        for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda"):
            logging.getLogger(name).setLevel(logging.WARNING)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    epochs = defense.epochs(cfg.epochs)
    module = SegmentationModule(
        cfg.arch, defense, num_classes=adapter.num_classes, ignore_index=adapter.ignore_index,
        optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=defense.weight_decay(cfg.weight_decay),
        eval_names=data.eval_names,
    )
    defense.setup(module, data, epochs)
    private = module.private_optimizer is not None
    if on_gpu(cfg.accelerator) and not private:  # Opacus' per-sample gradients want plain tensors
        module.speed_up(channels_last=cfg.channels_last, compile=cfg.compile)
    deterministic = _deterministic_flag(cfg)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator=cfg.accelerator,
        devices=1,
        # Opacus' ExpandedWeights cannot mix bf16 activations with fp32 weights: DP-SGD's ew mode trains in fp32
        precision=cfg.precision if not private or dp.autocasts(module.private_optimizer) else "32-true",
        deterministic=deterministic,
        benchmark=not deterministic,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    if not module.epoch_losses:
        raise SegleakError(f"{cfg.arch}: no training batch was drawn in {epochs} epochs")

    trainer.validate(module, datamodule=data, verbose=False)
    metrics: dict[str, float] = {
        "miou_train": float("nan"),
        "miou_heldout": float("nan"),
        **module.eval_metrics(),
        "train_loss_first": module.epoch_losses[0],
        "train_loss_last": module.epoch_losses[-1],
        "n_train": float(len(train_ids)),
        "epochs": float(epochs),
        **defense.summary(module),
        "seconds": time.monotonic() - started,
    }
    checkpoint = out_dir / "model.pt"
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in module.segmentor.state_dict().items()},
        "arch": cfg.arch,
        "norm": defense.norm,
        "dp": private,  # DP models carry Opacus' layer replacements
        "num_classes": adapter.num_classes,
        "config": {**asdict(cfg), "image_size": list(cfg.image_size) if cfg.image_size else None},
        "defense": {"name": defense.name, "params": defense.values},
        "metrics": metrics,
        "train_ids": list(train_ids),
    }
    write_atomic(checkpoint, lambda f: torch.save(payload, f))
    write_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    return TrainResult(metrics=metrics, checkpoint=checkpoint, seen_train_ids=sorted(module.seen_train_ids),
                       curves=module.epoch_metrics)


def load_model(checkpoint: Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The trained EncoderDecoder (eval mode) and the checkpoint's metadata (everything but the weights)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise SegleakError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: name it instead of a pickle traceback
        raise SegleakError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(payload, dict) or not {"state_dict", "arch", "norm", "num_classes"} <= set(payload):
        raise SegleakError(f"checkpoint {path} is not a segleak model (missing state_dict/arch/norm/num_classes)")
    model = build_segmentor(payload["arch"], norm=payload["norm"], num_classes=payload["num_classes"])
    if payload.get("dp"):
        dp.prepare_for_dp(model)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise SegleakError(f"checkpoint {path} does not match architecture {payload['arch']!r}: {exc}") from exc
    model.to(map_location).eval()
    return model, {k: v for k, v in payload.items() if k != "state_dict"}
