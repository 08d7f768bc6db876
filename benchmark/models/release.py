"""What the attacker receives from a model: per-pixel posteriors and the query's labels, at one resolution.

Resolution contract. For an input of H x W (after the optional `image_size` resize), the decode head's logits
are bilinearly resized (align_corners=False) to (H // output_stride, W // output_stride) for every architecture,
whatever its native output stride (1/8 for PSPNet, 1/4 for UPerNet, DeepLabV3+, SegFormer), so shadow and
victim models of different architectures give maps of one size; the paper's released demo used 1/8
(`output_stride=8`). Softmax is taken in float32 on those logits and the result stored as float16 (rows sum
to 1 within float16 rounding). Labels are downsampled to the same size by nearest neighbour (the pixel at
floor(i * stride) of each output cell, as `F.interpolate(mode="nearest")` picks), keeping 255 = ignore; this
is a sample of the label map, not a majority vote over the cell.

Stored as a compressed `.npz` (ids, probs float16, labels uint8), written atomically. `defend` applies an
output-side defense with a seeded generator and returns float32 posteriors.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from benchmark.data.adapters import get_adapter
from benchmark.defenses.output import apply_output_defense
from benchmark.errors import SegleakError
from benchmark.models.data import SegmentationDataset, collate_samples
from benchmark.models.lightning_module import SegmentationNet
from benchmark.models.train import load_model, select_samples


@dataclass
class Released:
    """Released outputs of N query images: `probs` [N,C,h,w] (float16, or float32 after `defend`), `labels` [N,h,w] uint8."""

    ids: list[str]
    probs: Tensor
    labels: Tensor


def released_size(height: int, width: int, output_stride: int) -> tuple[int, int]:
    """(H // s, W // s): the size every architecture's posteriors are brought to."""
    h, w = height // output_stride, width // output_stride
    if h < 1 or w < 1:
        raise SegleakError(f"output_stride {output_stride} is larger than the {height}x{width} input")
    return h, w


@torch.no_grad()
def release_outputs(
    checkpoint: Path,
    dataset: str,
    root: Path,
    ids: Sequence[str],
    *,
    image_size: tuple[int, int] | None = None,
    output_stride: int = 4,
    batch_size: int = 8,
) -> Released:
    """Query the model of `checkpoint` on `ids` of `dataset` and return what the attacker gets (see docstring)."""
    if isinstance(output_stride, bool) or not isinstance(output_stride, int) or output_stride < 1:
        raise SegleakError(f"output_stride must be a positive integer, got {output_stride!r}")
    if batch_size < 1:
        raise SegleakError(f"batch_size must be >= 1, got {batch_size!r}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _ = load_model(checkpoint, map_location=device)
    net = SegmentationNet(model).eval()
    data = SegmentationDataset(get_adapter(dataset), select_samples(dataset, root, ids, "query"), image_size)
    out_ids: list[str] = []
    probs: list[Tensor] = []
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
        logits = F.interpolate(net(images)[0].float(), size=size, mode="bilinear", align_corners=False)
        finite = torch.isfinite(logits).flatten(1).all(1)
        if not finite.all():
            bad = batch["id"][int((~finite).nonzero()[0])]
            raise SegleakError(f"{checkpoint}: the model outputs NaN/inf for image {bad!r}")
        probs.append(torch.softmax(logits, dim=1).half().cpu())
        labels.append(F.interpolate(label[:, None].float(), size=size, mode="nearest")[:, 0].to(torch.uint8))
        out_ids += batch["id"]
    if not out_ids:
        raise SegleakError("no query ids given")
    return Released(ids=out_ids, probs=torch.cat(probs), labels=torch.cat(labels))


def save_released(released: Released, path: Path) -> None:
    """Write `released` as a compressed npz (float16 posteriors), atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(
                f,
                ids=np.array(released.ids, dtype=str),
                probs=released.probs.cpu().to(torch.float16).numpy(),
                labels=released.labels.cpu().to(torch.uint8).numpy(),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_released(path: Path) -> Released:
    """Read what `save_released` wrote (no pickles)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return Released(
                ids=[str(i) for i in data["ids"]],
                probs=torch.from_numpy(data["probs"]),
                labels=torch.from_numpy(data["labels"]),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise SegleakError(f"released outputs {path} cannot be read: {exc}") from exc


def defend(released: Released, defense: str, params: dict, seed: int) -> Released:
    """Apply an output-side defense (benchmark.defenses.output) with a generator seeded by `seed`; float32 out."""
    generator = torch.Generator(device=released.probs.device).manual_seed(seed)
    probs = apply_output_defense(defense, released.probs.float(), dict(params), generator=generator)
    return Released(ids=list(released.ids), probs=probs.float(), labels=released.labels)
