"""Lightning training of an mmseg EncoderDecoder on raw (0..255, RGB) images.

- Normalisation: `SegmentationNet` subtracts/divides by the mean/std of the segmentor's own
  `SegDataPreProcessor` (the config's values). The preprocessor itself is not called: it expects mmseg's
  `SegDataSample` lists and would pad to a crop size; the module feeds whole, equally sized images.
- Loss: per-pixel cross entropy with ignore 255 (and optional label smoothing), averaged over the valid pixels
  of each image, then over the images of the batch. Not mmseg's `CrossEntropyLoss`: with
  `avg_non_ignore=False` it averages over all pixels of the batch, which is neither a per-image loss (DP-SGD's
  accounting needs one) nor a mean over labelled pixels. An auxiliary head (paper configs) adds its loss with
  the config's `loss_weight`.
- Optimisation is manual (`automatic_optimization = False`) so that one path serves plain training and DP-SGD,
  including Poisson-sampled empty batches, for which DP-SGD must still take a noise-only step.
- A training-side defense (`benchmark.defenses.base.TrainingDefense`) shapes training through hooks: the norm
  layers, set-up before training, and the loss of each batch (`training_loss`, built from `outputs` and
  `per_image_loss`).
- The module records the id of every training image it was fed (`seen_train_ids`), so a test can prove that
  a model's training loader read exactly its member list.
- Validation dataloaders are named by `eval_names` (e.g. "train", "heldout") and log `miou_<name>` and
  `loss_<name>` (the train/held-out loss gap is what loss-based attacks exploit).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.defenses.base import TrainingDefense
from benchmark.errors import SegleakError
from benchmark.metrics.segmentation import confusion_matrix, miou
from benchmark.data.labels import IGNORE_INDEX
from benchmark.models.builder import build_segmentor

OPTIMIZERS = ("sgd", "adamw")


class SegmentationNet(nn.Module):
    """An mmseg segmentor as a plain module: raw images in, logits of the decode (and auxiliary) heads out.

    One `forward` for everything keeps Opacus' ExpandedWeights mode (which only sees `forward`) usable.
    """

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, images: Tensor, with_aux: bool = False) -> list[Tensor]:
        preprocessor = self.segmentor.data_preprocessor
        x = (images - preprocessor.mean.view(1, -1, 1, 1)) / preprocessor.std.view(1, -1, 1, 1)
        feats = self.segmentor.extract_feat(x)
        outs = [self.segmentor.decode_head(feats)]
        if with_aux and self.segmentor.with_auxiliary_head:
            outs += [head(feats) for head in self.auxiliary_heads()]
        return outs

    def auxiliary_heads(self) -> list[nn.Module]:
        aux = self.segmentor.auxiliary_head
        return list(aux) if isinstance(aux, nn.ModuleList) else [aux]


def upsample(logits: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """Logits bilinearly resized to the label map's size (a no-op when they already match)."""
    if logits.shape[-2:] == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def per_image_ce(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """`[B]` mean CE over each image's labelled pixels (0 for an image without any); logits upsampled to labels."""
    pixel = F.cross_entropy(upsample(logits, labels.shape[-2:]).float(), labels, ignore_index=ignore_index,
                            reduction="none", label_smoothing=label_smoothing)
    valid = (labels != ignore_index).flatten(1).sum(1)
    return pixel.flatten(1).sum(1) / valid.clamp(min=1)


class SegmentationModule(pl.LightningModule):
    """Trains one segmentor; see the module docstring for normalisation, loss and optimisation choices."""

    def __init__(
        self,
        arch: str,
        defense: TrainingDefense,
        *,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        poly_power: float = 0.9,
        eval_names: Sequence[str] = ("train", "heldout"),
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise SegleakError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if not lr > 0:
            raise SegleakError(f"learning rate must be > 0, got {lr}")
        self.save_hyperparameters(ignore=["defense"])
        self.automatic_optimization = False
        self.defense = defense
        self.net: nn.Module = SegmentationNet(build_segmentor(arch, norm=defense.norm, num_classes=num_classes))
        self.seen_train_ids: set[str] = set()
        self.epoch_losses: list[float] = []
        # per epoch: the mean training batch loss and what that epoch's validation measured (the run's curves)
        self.epoch_metrics: list[dict[str, float]] = []
        self.private_optimizer: torch.optim.Optimizer | None = None
        self.total_steps: int | None = None  # optimiser steps of the whole training, where not one per batch
        self.channels_last = False
        self._compiled: nn.Module | None = None  # torch.compile of `net` for the training forward
        self._loss_sum = 0.0
        self._loss_count = 0
        self._confusions: dict[int, Tensor] = {}
        self._eval_losses: dict[int, tuple[float, int]] = {}

    @property
    def segmentor(self) -> nn.Module:
        """The mmseg EncoderDecoder, unwrapped from Opacus' GradSampleModule if DP wrapped it."""
        return self.plain_net.segmentor

    @property
    def plain_net(self) -> SegmentationNet:
        return getattr(self.net, "_module", self.net)

    def forward(self, images: Tensor) -> Tensor:
        """Decode-head logits at the model's output resolution (inference: bypasses Opacus' wrapper)."""
        return self.plain_net(images)[0]

    def use_private(self, net: nn.Module, optimizer: torch.optim.Optimizer, steps: int | None = None) -> None:
        """Train through Opacus' per-sample-gradient model and noisy optimiser (DP-SGD's set-up); `steps`: the
        noisy steps of the whole training (Poisson batches, which virtual batches split into several)."""
        self.net, self.private_optimizer, self.total_steps = net, optimizer, steps

    def speed_up(self, channels_last: bool, compile: bool, backend: str = "inductor") -> None:
        """GPU training speed (measured by `make gpu-check`): channels-last weights and activations, and a
        compiled training forward (evaluation and release use the plain network)."""
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
            self.channels_last = True
        if compile:
            self._compiled = torch.compile(self.net, backend=backend)

    # --- losses a defense composes --------------------------------------------------------------------------
    def outputs(self, images: Tensor) -> list[tuple[float, Tensor]]:
        """(loss weight, logits) of the decode head and of each auxiliary head (paper configs), training mode."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        net = self.net if self._compiled is None else self._compiled  # (a compiled module has no truth value)
        outs = net(images, with_aux=True)
        weights = [1.0] + [float(getattr(h.loss_decode, "loss_weight", 1.0))
                           for h in (self.plain_net.auxiliary_heads() if len(outs) > 1 else [])]
        return list(zip(weights, outs))

    def per_image_loss(self, outputs: list[tuple[float, Tensor]], labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """`[B]` weighted sum over heads of each image's mean pixel cross-entropy."""
        return sum(w * per_image_ce(logits, labels, label_smoothing, self.hparams.ignore_index) for w, logits in outputs)

    # --- optimisation -------------------------------------------------------------------------------------
    def build_optimizer(self) -> torch.optim.Optimizer:
        hp = self.hparams
        params = [p for p in self.net.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)

    def configure_optimizers(self):
        optimizer = self.private_optimizer or self.build_optimizer()
        total = max(1, self.total_steps or int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=self.hparams.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- training -----------------------------------------------------------------------------------------
    def _unpack(self, batch: dict | Sequence[Tensor]) -> tuple[Tensor, Tensor, list[str]]:
        if isinstance(batch, dict):
            return batch["image"], batch["label"], list(batch["id"])
        images, labels, index = batch  # DP-SGD's (image, label, index) tuples over the training set
        ids = self.trainer.datamodule.train_set.ids
        return images, labels, [ids[i] for i in index.tolist()]

    def training_step(self, batch, batch_idx: int) -> None:
        images, labels, ids = self._unpack(batch)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        if images.shape[0] == 0:
            self._noise_only_step(optimizer)
        else:
            self.seen_train_ids.update(ids)
            loss = self.defense.training_loss(self, images, labels)  # a tensor, or DP-SGD's two-pass loss
            value = loss.detach()
            if not torch.isfinite(value):
                raise SegleakError(
                    f"{self.hparams.arch}: training loss is {value.item()} at epoch {self.current_epoch} "
                    f"(batch {batch_idx}); lower the learning rate"
                )
            self.manual_backward(loss)
            optimizer.step()
            self._loss_sum += value.item() * images.shape[0]
            self._loss_count += images.shape[0]
            self.log("train_loss", value, on_step=False, on_epoch=True, batch_size=images.shape[0])
        # a virtual batch's physical parts but the last only add their clipped gradients (Opacus' flag)
        if not getattr(self.private_optimizer, "_is_last_step_skipped", False):
            self.lr_schedulers().step()

    def _noise_only_step(self, optimizer) -> None:
        """An empty Poisson batch under DP-SGD: zero per-sample gradients (ew) and a zero clipped sum (ghost), so
        the step adds noise only. The empty per-sample gradients go after the step: ghost's hooks would stack the
        next batch's onto them."""
        if self.private_optimizer is None:
            return
        params = [p for p in self.net.parameters() if p.requires_grad]
        for p in params:
            p.grad_sample = p.new_zeros((0, *p.shape))
            p.grad = torch.zeros_like(p)
        optimizer.step()
        for p in params:
            p.grad_sample = None

    def on_train_epoch_end(self) -> None:
        if self._loss_count:
            self.epoch_losses.append(self._loss_sum / self._loss_count)
            # Lightning validates before this hook: the eval sums are this epoch's
            self.epoch_metrics.append({"train_loss": self.epoch_losses[-1], **self.eval_metrics()})
        self._loss_sum, self._loss_count = 0.0, 0

    # --- evaluation ---------------------------------------------------------------------------------------
    def accumulate_eval(self, key: int, logits: Tensor, labels: Tensor) -> None:
        """Add a batch (logits upsampled to the labels) to the confusion matrix and loss sums of loader `key`."""
        logits = upsample(logits, labels.shape[-2:])
        ignore = self.hparams.ignore_index
        conf = confusion_matrix(logits.argmax(1), labels, self.hparams.num_classes, ignore).cpu()
        self._confusions[key] = self._confusions.get(key, 0) + conf
        loss_sum, count = self._eval_losses.get(key, (0.0, 0))
        loss = per_image_ce(logits, labels, ignore_index=ignore).sum().item()
        self._eval_losses[key] = (loss_sum + loss, count + labels.shape[0])

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels, _ = self._unpack(batch)
        self.accumulate_eval(dataloader_idx, self(images), labels)

    def on_validation_epoch_start(self) -> None:
        self._confusions, self._eval_losses = {}, {}

    def eval_metrics(self) -> dict[str, float]:
        """`miou_<name>` and `loss_<name>` (mean per-image CE) for every evaluation loader accumulated so far."""
        names = self.hparams.eval_names
        out = {f"miou_{names[k]}": miou(conf) for k, conf in sorted(self._confusions.items())}
        out.update({f"loss_{names[k]}": total / n for k, (total, n) in sorted(self._eval_losses.items())})
        return out

    def on_validation_epoch_end(self) -> None:
        for name, value in self.eval_metrics().items():
            self.log(name, value, add_dataloader_idx=False)
