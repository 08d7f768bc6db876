"""Train one segmentation model on exactly its member list, evaluate it, and save it.

`train_model` is what the grid calls for every victim, shadow and reference model. It is deterministic on CPU
for a fixed seed (seeded global RNGs, a seeded loader generator, no workers, deterministic algorithms), writes
`out_dir/model.pt` (a plain dict, loadable with `torch.load(weights_only=True)`) and `out_dir/metrics.json`.
mIoU is measured once after training on the members ("train") and on the held-out ids, in eval mode.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmark.data.adapters import Sample, get_adapter
from benchmark.defenses.training import TrainingRecipe, resolve_training_defense
from benchmark.errors import SegleakError
from benchmark.models import dp
from benchmark.models.builder import build_segmentor
from benchmark.models.data import SegmentationDataset, TupleView, collate_samples
from benchmark.models.lightning_module import SegmentationModule

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "32", "16", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """One model's training settings (a grid value); `defense` is a training-side defense (benchmark.defenses.training)."""

    arch: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    image_size: tuple[int, int] | None = None
    seed: int = 0
    defense: str = "none"
    defense_params: dict = field(default_factory=dict)
    precision: str = "32-true"
    accelerator: str = "auto"
    num_threads: int | None = 1


@dataclass
class TrainResult:
    metrics: dict[str, float]
    checkpoint: Path
    seen_train_ids: list[str]


def _check_config(cfg: TrainConfig) -> TrainingRecipe:
    for name in ("epochs", "batch_size"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SegleakError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise SegleakError(f"lr must be a positive number, got {cfg.lr!r}")
    if cfg.precision not in PRECISIONS:
        raise SegleakError(f"unknown precision {cfg.precision!r}; known: {', '.join(PRECISIONS)}")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise SegleakError(f"num_threads must be >= 1 or None, got {cfg.num_threads!r}")
    return resolve_training_defense(
        cfg.defense, dict(cfg.defense_params), epochs=cfg.epochs, weight_decay=cfg.weight_decay
    )


def select_samples(dataset: str, root: Path, ids: Sequence[str], what: str) -> list[Sample]:
    """The samples of `ids` in the given order; an id missing from the dataset is an error naming it."""
    by_id = {s.id: s for s in get_adapter(dataset).list_samples(Path(root))}
    missing = [i for i in ids if i not in by_id]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SegleakError(f"{what} id {missing[0]!r}{more} is not in the {dataset} dataset at {root}")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if list(ids).count(i) > 1)
        raise SegleakError(f"{what} id {dup!r} is listed twice")
    return [by_id[i] for i in ids]


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _deterministic_flag(accelerator: str) -> bool | str:
    """Strict on CPU; on GPUs some kernels (bilinear upsampling backward) have no deterministic version."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    return True if on_cpu else "warn"


def train_model(
    cfg: TrainConfig,
    dataset: str,
    root: Path,
    train_ids: Sequence[str],
    heldout_ids: Sequence[str],
    out_dir: Path,
    progress: bool = False,
) -> TrainResult:
    """Train `cfg.arch` on `train_ids` of `dataset` at `root`, evaluate on members and `heldout_ids`, save."""
    recipe = _check_config(cfg)
    if not train_ids:
        raise SegleakError("train_ids is empty: a model needs at least one member")
    overlap = set(train_ids) & set(heldout_ids)
    if overlap:
        raise SegleakError(f"id {sorted(overlap)[0]!r} is both a member and held out")
    adapter = get_adapter(dataset)
    train_set = SegmentationDataset(adapter, select_samples(dataset, root, train_ids, "train"), cfg.image_size)
    heldout_set = SegmentationDataset(adapter, select_samples(dataset, root, heldout_ids, "held-out"), cfg.image_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    started = time.monotonic()
    if not progress:  # Lightning's banner lines (GPU available, tips) would flood a grid's logs
        for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda"):
            logging.getLogger(name).setLevel(logging.WARNING)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    norm = "GN" if recipe.dp else "BN"
    module = SegmentationModule(
        cfg.arch,
        norm=norm,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=recipe.weight_decay,
        label_smoothing=recipe.label_smoothing,
        mixup_alpha=recipe.mixup_alpha,
        eval_names=[name for name, s in (("train", train_set), ("heldout", heldout_set)) if len(s)],
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    private = None
    if recipe.dp:
        dp.prepare_for_dp(module.net)
        base_loader = DataLoader(TupleView(train_set), batch_size=cfg.batch_size, generator=generator)
        private = dp.make_private(module.net, module.build_optimizer(), base_loader, recipe.dp, epochs=recipe.epochs)
        module.net, module.dp_optimizer = private.net, private.optimizer
        module.index_ids = train_set.ids
        train_loader: DataLoader = private.loader
    else:
        train_loader = DataLoader(
            train_set,
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=collate_samples,
            num_workers=0,
            drop_last=len(train_set) > cfg.batch_size,  # a lone 1-image batch would break BatchNorm
        )
    eval_loaders = [
        DataLoader(s, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate_samples)
        for s in (train_set, heldout_set)
        if len(s)
    ]  # in the order of eval_names

    trainer = pl.Trainer(
        max_epochs=recipe.epochs,
        accelerator=cfg.accelerator,
        devices=1,
        precision=cfg.precision,
        deterministic=_deterministic_flag(cfg.accelerator),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=train_loader)
    if not module.epoch_losses:
        raise SegleakError(f"{cfg.arch}: no training batch was drawn in {recipe.epochs} epochs")

    trainer.validate(module, dataloaders=eval_loaders, verbose=False)
    metrics: dict[str, float] = {
        "miou_train": float("nan"),
        "miou_heldout": float("nan"),
        **module.eval_metrics(),
        "train_loss_first": module.epoch_losses[0],
        "train_loss_last": module.epoch_losses[-1],
        "n_train": float(len(train_set)),
        "epochs": float(recipe.epochs),
    }
    if private is not None:
        metrics["dp_epsilon"] = private.epsilon()
        metrics["dp_noise_multiplier"] = private.noise_multiplier
        metrics["dp_delta"] = private.delta
    metrics["seconds"] = time.monotonic() - started

    checkpoint = out_dir / "model.pt"
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in module.segmentor.state_dict().items()},
        "arch": cfg.arch,
        "norm": norm,
        "dp": private is not None,  # DP models carry Opacus' layer replacements (DPMultiheadAttention)
        "num_classes": module.hparams.num_classes,
        "config": {**asdict(cfg), "image_size": list(cfg.image_size) if cfg.image_size else None},
        "metrics": metrics,
        "train_ids": list(train_ids),
    }
    _write_atomic(checkpoint, lambda f: torch.save(payload, f))
    _write_atomic(out_dir / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    return TrainResult(metrics=metrics, checkpoint=checkpoint, seen_train_ids=sorted(module.seen_train_ids))


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
