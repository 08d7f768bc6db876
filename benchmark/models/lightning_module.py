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

from benchmark.errors import SegleakError
from benchmark.metrics.segmentation import confusion_matrix, miou
from benchmark.models.builder import build_segmentor

IGNORE_INDEX = 255
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


def per_image_ce(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """`[B]` mean CE over each image's labelled pixels (0 for an image without any); logits upsampled to labels."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    pixel = F.cross_entropy(
        logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none", label_smoothing=label_smoothing
    )
    valid = (labels != IGNORE_INDEX).flatten(1).sum(1)
    return pixel.flatten(1).sum(1) / valid.clamp(min=1)


class SegmentationModule(pl.LightningModule):
    """Trains one segmentor; see the module docstring for normalisation, loss and optimisation choices."""

    def __init__(
        self,
        arch: str,
        *,
        num_classes: int = 19,
        norm: str = "BN",
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        poly_power: float = 0.9,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        eval_names: Sequence[str] = ("train", "heldout"),
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise SegleakError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if not lr > 0:
            raise SegleakError(f"learning rate must be > 0, got {lr}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.net: nn.Module = SegmentationNet(build_segmentor(arch, norm=norm, num_classes=num_classes))
        self.seen_train_ids: set[str] = set()
        self.index_ids: list[str] | None = None  # ids of the train dataset, for tuple (DP) batches
        self.epoch_losses: list[float] = []
        self.dp_optimizer: torch.optim.Optimizer | None = None
        self._loss_sum = 0.0
        self._loss_count = 0
        self._confusions: dict[int, Tensor] = {}
        self._eval_losses: dict[int, tuple[float, int]] = {}

    @property
    def segmentor(self) -> nn.Module:
        """The mmseg EncoderDecoder, unwrapped from Opacus' GradSampleModule if DP wrapped it."""
        net = getattr(self.net, "_module", self.net)
        return net.segmentor

    def forward(self, images: Tensor) -> Tensor:
        """Decode-head logits at the model's output resolution (inference: bypasses Opacus' wrapper)."""
        return getattr(self.net, "_module", self.net)(images)[0]

    # --- optimisation -------------------------------------------------------------------------------------
    def build_optimizer(self) -> torch.optim.Optimizer:
        hp = self.hparams
        params = [p for p in self.net.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)

    def configure_optimizers(self):
        optimizer = self.dp_optimizer or self.build_optimizer()
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=self.hparams.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- training -----------------------------------------------------------------------------------------
    def _unpack(self, batch: dict | Sequence[Tensor]) -> tuple[Tensor, Tensor, list[str]]:
        if isinstance(batch, dict):
            return batch["image"], batch["label"], list(batch["id"])
        images, labels, index = batch
        if self.index_ids is None:
            raise SegleakError("tuple batches need `index_ids` (the training dataset's ids) on the module")
        return images, labels, [self.index_ids[i] for i in index.tolist()]

    def training_loss(self, images: Tensor, labels: Tensor) -> Tensor:
        """Mean over images of the per-image loss (mix-up mixes the two per-image losses with the images)."""
        hp = self.hparams
        partner = None
        if hp.mixup_alpha > 0 and images.shape[0] > 1:
            lam = float(torch.distributions.Beta(hp.mixup_alpha, hp.mixup_alpha).sample())
            partner = torch.randperm(images.shape[0], device=images.device)
            images = lam * images + (1 - lam) * images[partner]
        outs = self.net(images, with_aux=True)
        weights = [1.0] + [float(getattr(h.loss_decode, "loss_weight", 1.0)) for h in self._aux_heads(len(outs))]
        loss = images.new_zeros(images.shape[0])
        for w, logits in zip(weights, outs):
            per_image = per_image_ce(logits, labels, hp.label_smoothing)
            if partner is not None:
                per_image = lam * per_image + (1 - lam) * per_image_ce(logits, labels[partner], hp.label_smoothing)
            loss = loss + w * per_image
        return loss.mean()

    def _aux_heads(self, n_outputs: int) -> list[nn.Module]:
        net = getattr(self.net, "_module", self.net)
        return net.auxiliary_heads() if n_outputs > 1 else []

    def training_step(self, batch, batch_idx: int) -> None:
        images, labels, ids = self._unpack(batch)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        if images.shape[0] == 0:
            self._noise_only_step(optimizer)
        else:
            self.seen_train_ids.update(ids)
            loss = self.training_loss(images, labels)
            if not torch.isfinite(loss):
                raise SegleakError(
                    f"{self.hparams.arch}: training loss is {loss.item()} at epoch {self.current_epoch} "
                    f"(batch {batch_idx}); lower the learning rate"
                )
            self.manual_backward(loss)
            optimizer.step()
            self._loss_sum += loss.item() * images.shape[0]
            self._loss_count += images.shape[0]
            self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=images.shape[0])
        self.lr_schedulers().step()

    def _noise_only_step(self, optimizer) -> None:
        """An empty Poisson batch under DP-SGD: zero per-sample gradients, so the step adds noise only."""
        if self.dp_optimizer is None:
            return
        for p in self.net.parameters():
            if p.requires_grad:
                p.grad_sample = p.new_zeros((0, *p.shape))
        optimizer.step()

    def on_train_epoch_end(self) -> None:
        if self._loss_count:
            self.epoch_losses.append(self._loss_sum / self._loss_count)
        self._loss_sum, self._loss_count = 0.0, 0

    # --- evaluation ---------------------------------------------------------------------------------------
    def accumulate_eval(self, key: int, logits: Tensor, labels: Tensor) -> None:
        """Add a batch (logits upsampled to the labels) to the confusion matrix and loss sums of loader `key`."""
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        conf = confusion_matrix(logits.argmax(1), labels, self.hparams.num_classes, IGNORE_INDEX).cpu()
        self._confusions[key] = self._confusions.get(key, 0) + conf
        loss_sum, count = self._eval_losses.get(key, (0.0, 0))
        self._eval_losses[key] = (loss_sum + per_image_ce(logits, labels).sum().item(), count + labels.shape[0])

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
