"""What the attacker receives from a model: per-pixel log-posteriors and the query's labels, at one resolution.

Resolution contract. For an input of H x W (after the optional `image_size` resize), the decode head's logits
are bilinearly resized (align_corners=False) to (H // output_stride, W // output_stride) for every architecture,
whatever its native output stride (1/8 for PSPNet, 1/4 for UPerNet, DeepLabV3+, SegFormer), so shadow and
victim models of different architectures give maps of one size; the paper's released demo used 1/8 of the full
Cityscapes resolution. Labels are downsampled to the same size with `nearest-exact`, which picks the pixel at
the centre of each output cell, the point the bilinear logits describe (plain `nearest` would pick the cell's
corner); 255 stays ignore.

Precision contract. The release stores log_softmax(logits), computed in float32, as float16 *log*-
probabilities: rounding is itself a defense and must never be applied silently. Near p = 1 the loss -log p
keeps float16's absolute step of 6e-8 (p = 1 - 1e-5 reads 1.0014e-5), elsewhere a relative error under 0.05%
(p = 1e-9 reads 20.72); float16 *probabilities* would have turned every p > 1 - 2.4e-4 into exactly 1. Every
representation and statistic is computed from these log-probabilities (in float32) without a round trip
through float16 probabilities. Log-probabilities are floored at log(1e-30) (`LOG_FLOOR`), the authors' clip.

Stored as a compressed `.npz` (ids, log_probs float16, labels uint8), written atomically. `defend` applies an
output-side defense with a seeded generator and returns float32 log-posteriors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from benchmark.data.adapters import DatasetAdapter
from benchmark.defenses.base import LOG_FLOOR, OutputDefense
from benchmark.errors import SegleakError
from benchmark.io import write_atomic
from benchmark.models.data import SegmentationDataset, collate_samples
from benchmark.models.lightning_module import SegmentationNet
from benchmark.models.train import load_model, select_samples
from benchmark.params import Param

# The grid's `release` block.
RELEASE_PARAMS: dict[str, Param] = {
    "output_stride": Param(int, default=4, low=1, help="posteriors at 1/output_stride of the input size"),
    "batch_size": Param(int, default=8, low=1),
}


@dataclass
class Released:
    """Released outputs of N query images: `log_probs` [N,C,h,w] (float16 as stored, float32 after `defend`),
    `labels` [N,h,w] uint8."""

    ids: list[str]
    log_probs: Tensor
    labels: Tensor
    label_only: bool = False  # set by `defend` when the defense releases the top-1 label alone

    @property
    def probs(self) -> Tensor:
        """Posteriors in float32 (for representations that take probabilities)."""
        return self.log_probs.float().exp()

    def select(self, ids: Sequence[str]) -> Released:
        """The images `ids`, in that order (an id not in the release is an error naming it)."""
        index = {image_id: i for i, image_id in enumerate(self.ids)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise SegleakError(f"image {missing[0]!r} is not in this release")
        rows = torch.tensor([index[i] for i in ids], dtype=torch.long)
        return Released(list(ids), self.log_probs[rows], self.labels[rows], self.label_only)


def released_size(height: int, width: int, output_stride: int) -> tuple[int, int]:
    """(H // s, W // s): the size every architecture's posteriors are brought to."""
    h, w = height // output_stride, width // output_stride
    if h < 1 or w < 1:
        raise SegleakError(f"output_stride {output_stride} is larger than the {height}x{width} input")
    return h, w


def downsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Labels `[B,H,W]` at the release size: the pixel at each output cell's centre (`nearest-exact`)."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(torch.uint8)


@torch.no_grad()
def release_outputs(
    checkpoint: Path,
    adapter: DatasetAdapter,
    root: Path,
    ids: Sequence[str],
    *,
    image_size: tuple[int, int] | None = None,
    output_stride: int = 4,
    batch_size: int = 8,
) -> Released:
    """Query the model of `checkpoint` on `ids` of the dataset at `root` and return what the attacker gets."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _ = load_model(checkpoint, map_location=device)
    net = SegmentationNet(model).eval()
    data = SegmentationDataset(adapter, select_samples(adapter, root, ids, "query"), image_size)
    out_ids: list[str] = []
    log_probs: list[Tensor] = []
    labels: list[Tensor] = []
    size: tuple[int, int] | None = None
    for batch in DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_samples):
        images, label = batch["image"].to(device), batch["label"]
        hw = released_size(*images.shape[-2:], output_stride)
        if size is not None and hw != size:
            raise SegleakError(
                f"image {batch['id'][0]!r} gives a {hw} map but earlier ones gave {size}; "
                "set image_size so that all query images have one size"
            )
        size = hw
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):  # 311 img/s on an H200
            raw = net(images)[0]
        logits = F.interpolate(raw.float(), size=size, mode="bilinear", align_corners=False)
        finite = torch.isfinite(logits).flatten(1).all(1)
        if not finite.all():
            bad = batch["id"][int((~finite).nonzero()[0])]
            raise SegleakError(f"{checkpoint}: the model outputs NaN/inf for image {bad!r}")
        log_probs.append(torch.log_softmax(logits, dim=1).clamp_min(LOG_FLOOR).half().cpu())
        labels.append(downsample_labels(label, size))
        out_ids += batch["id"]
    if not out_ids:
        raise SegleakError("no query ids given")
    return Released(ids=out_ids, log_probs=torch.cat(log_probs), labels=torch.cat(labels))


def save_released(released: Released, path: Path) -> None:
    """Write `released` as a compressed npz (float16 log-posteriors), atomically."""
    write_atomic(Path(path), lambda f: np.savez_compressed(
        f,
        ids=np.array(released.ids, dtype=str),
        log_probs=released.log_probs.cpu().to(torch.float16).numpy(),
        labels=released.labels.cpu().to(torch.uint8).numpy(),
    ))


def load_released(path: Path) -> Released:
    """Read what `save_released` wrote (no pickles)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return Released(
                ids=[str(i) for i in data["ids"]],
                log_probs=torch.from_numpy(data["log_probs"]),
                labels=torch.from_numpy(data["labels"]),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise SegleakError(f"released outputs {path} cannot be read: {exc}") from exc


def defend(released: Released, defense: OutputDefense | None, seed: int) -> Released:
    """Apply an output-side defense (None: release as is) with a generator seeded by `seed`; float32 out."""
    log_probs = released.log_probs.float()
    if defense is None:
        return Released(list(released.ids), log_probs, released.labels)
    generator = torch.Generator(device=log_probs.device).manual_seed(seed)
    return Released(list(released.ids), defense.apply(log_probs, generator=generator), released.labels,
                    label_only=defense.label_only)
