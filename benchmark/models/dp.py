"""DP-SGD for mmseg segmentors with Opacus 1.6 (no DPLightningDataModule: it subclasses the old `pytorch_lightning` namespace and fails with ours).

What each architecture family needs (measured with torch 2.13, mmseg 1.2.2, opacus 1.6):
- ResNet-based (PSPNet, UPerNet, DeepLabV3+): GroupNorm (`build_segmentor(arch, norm="GN")`). Opacus' hooks
  (its "hooks" and "ghost" modes) fail on mmseg's in-place residual add (`out += identity`, "Output 0 of
  BackwardHookFunction is a view and is being modified inplace"), even with every ReLU made non-in-place, unless
  the block's last norm hands over a copy of its output (`prepare_for_dp` does that); ExpandedWeights ("ew")
  needs no such fix.
- SegFormer (MiT): "hooks" mode after (1) non-in-place activations, (2) each `nn.MultiheadAttention` replaced by
  Opacus' `DPMultiheadAttention`, and (3) that attention run batch-first: mmseg transposes to sequence-first
  before calling the attention, so Opacus' per-sample hooks would take the sequence axis for the batch axis
  ("stack expects each tensor to be equal size"). "ew" fails on MiT (a `view` on a non-contiguous tensor).
  Its LayerNorms are supported by Opacus as they are; the head's BN is GN.
- All: Opacus' Conv2d grad sampler returns wrong per-sample weight gradients (their sum is not the batch
  gradient) when the conv input is not contiguous, as after MiT's token -> map reshape
  (`x.transpose(1, 2).reshape(B, C, H, W)`). A forward pre-hook makes every conv input contiguous;
  tests/test_models_dp.py checks per-sample gradients against single-image gradients.
So every architecture in `mmseg_configs/` trains under DP (the trainer always builds the GN variant for it);
`prepare_for_dp` raises if Opacus' validator still finds an unsupported layer.

Two ways to clip (`MODES`), the same mechanism (per-image clipping to `max_grad_norm`, one Gaussian draw of std
noise_multiplier * max_grad_norm per step, the sum divided by the expected batch size):
- "ghost" (the default): Opacus' fast gradient clipping. A first backward pass yields each image's gradient norm
  layer by layer (`benchmark.models.norm_samplers`: Conv2d and Linear by mixed ghost clipping; GroupNorm and
  LayerNorm from their small per-sample gradients, freed at once), a second one the sum of the clipped gradients
  (each image's loss weighted by its clipping factor). No layer's per-sample gradients outlive the layer, so the
  memory is that of plain training plus one layer's per-sample work, at about twice the backward's time. It runs on Opacus'
  hooks, so the residual blocks' last norm hands mmseg a copy of its output (`out += identity` would write into
  the hooked output: the "hooks" failure above), and it runs under bf16 autocast (the norms are taken in fp32).
- "ew": every parameter's per-sample gradients materialised at once (`batch x parameters` floats), through
  ExpandedWeights (or hooks for SegFormer); fp32 only.
Virtual batches (`max_physical_batch_size`, Opacus' BatchMemoryManager) split each Poisson batch into physical
batches whose clipped gradients add up before the one noisy step: the same step, in less memory.

The loss must be a mean over images of a per-image loss (the module does that), sampling is Poisson
(`DPDataLoader`, expected batch = the configured batch size), and the privacy spent is read from the RDP
accountant after training.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from mmseg.models.backbones.resnet import BasicBlock, Bottleneck
from opacus import GradSampleModule, PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.layers import DPMultiheadAttention
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.batch_memory_manager import wrap_data_loader
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from opacus.validators import ModuleValidator
from opacus.validators.multihead_attention import fix as fix_multihead_attention
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from benchmark.errors import SegleakError
from benchmark.models import norm_samplers  # noqa: F401 - registers the Conv2d and Linear norm samplers

ACCOUNTANT = "rdp"
MODES = ("ghost", "ew")


def opacus_mode(net: nn.Module, mode: str) -> str:
    """Opacus' `grad_sample_mode` for `mode`: "ghost" as it is; "ew" is "hooks" for attention models (after
    `prepare_for_dp`), ExpandedWeights for the convolutional ones (see the module docstring)."""
    if mode not in MODES:
        raise SegleakError(f"unknown DP-SGD grad_sample_mode {mode!r}; known: {', '.join(MODES)}")
    if mode == "ghost":
        return mode
    has_attention = any(isinstance(m, (nn.MultiheadAttention, DPMultiheadAttention)) for m in net.modules())
    return "hooks" if has_attention else "ew"


def autocasts(optimizer: Optimizer) -> bool:
    """Whether this DP optimiser's mode trains under autocast: ghost does (fp32 norms), ew does not."""
    return isinstance(optimizer, DPOptimizerFastGradientClipping)


def _contiguous_inputs(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def _copied(norm: nn.Module) -> Callable[[Tensor], Tensor]:
    return lambda x: norm(x).clone()


class _DPBasicBlock(BasicBlock):
    """mmseg's BasicBlock whose last norm returns a copy, so `out += identity` leaves Opacus' hooked output alone."""

    @property
    def norm2(self) -> Callable[[Tensor], Tensor]:
        return _copied(getattr(self, self.norm2_name))


class _DPBottleneck(Bottleneck):
    """mmseg's Bottleneck whose last norm returns a copy (see `_DPBasicBlock`)."""

    @property
    def norm3(self) -> Callable[[Tensor], Tensor]:
        return _copied(getattr(self, self.norm3_name))


_OUT_OF_PLACE_RESIDUAL = {BasicBlock: _DPBasicBlock, Bottleneck: _DPBottleneck}


def prepare_for_dp(net: nn.Module) -> None:
    """Make `net` trainable by Opacus in place (before its optimizer is built: parameters are replaced)."""
    for module in net.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            module.register_forward_pre_hook(_contiguous_inputs)
        if hasattr(module, "inplace") and isinstance(module.inplace, bool):
            module.inplace = False
        if type(module) in _OUT_OF_PLACE_RESIDUAL:  # same parameters and state-dict keys, another forward
            module.__class__ = _OUT_OF_PLACE_RESIDUAL[type(module)]
        attn = getattr(module, "attn", None)
        if isinstance(attn, nn.MultiheadAttention):
            dp_attn = fix_multihead_attention(attn)
            if getattr(module, "batch_first", False):
                # mmseg transposes (B, L, E) to (L, B, E) only for nn.MultiheadAttention's sake; keep the batch
                # axis first all the way so per-sample gradients are taken over images.
                module.batch_first = False
                dp_attn.batch_first = True
            module.attn = dp_attn
    errors = ModuleValidator.validate(net, strict=False)
    if errors:
        raise SegleakError(f"model is not trainable under DP-SGD: {'; '.join(str(e) for e in errors)}")


class PhysicalBatches:
    """Opacus' split of each Poisson batch into physical batches (BatchMemoryManager's loader), without a length:
    that length is an estimate (Poisson batch sizes are random) and Lightning would end an epoch after that many
    batches, cutting a Poisson batch short; unsized, an epoch runs to the sampler's end."""

    def __init__(self, loader: DPDataLoader, max_batch_size: int, optimizer: DPOptimizer):
        self.loader = wrap_data_loader(data_loader=loader, max_batch_size=max_batch_size, optimizer=optimizer)

    def __iter__(self):
        return iter(self.loader)


@dataclass
class PrivateTraining:
    """What Opacus hands back: the per-sample-gradient model, the noisy optimiser, the Poisson loader (split into
    physical batches where asked), and the mode that decides how a batch's loss is back-propagated."""

    net: GradSampleModule
    optimizer: DPOptimizer
    poisson_loader: DPDataLoader  # one item per logical batch (the accountant's steps)
    loader: DPDataLoader | PhysicalBatches  # what training iterates: the Poisson batches or their physical parts
    engine: PrivacyEngine
    delta: float
    noise_multiplier: float
    mode: str

    def epsilon(self) -> float:
        """Privacy spent so far at `delta` (0 before any step; inf without noise: no guarantee at all)."""
        if self.noise_multiplier == 0:
            return math.inf
        return float(self.engine.get_epsilon(self.delta))

    def loss(self, per_image: Tensor) -> Tensor | DPTensorFastGradientClipping:
        """The batch loss to back-propagate from `[B]` per-image losses: their mean, or in the ghost mode Opacus'
        loss whose `backward` takes the two passes (norms, then the clipped sum); both have `detach`/`item`."""
        if self.mode == "ghost":
            return DPTensorFastGradientClipping(self.net, self.optimizer, per_image, loss_reduction="mean")
        return per_image.mean()


def make_private(
    net: nn.Module, optimizer: Optimizer, loader: DataLoader, *, max_grad_norm: float, delta: float, epochs: int,
    noise_multiplier: float | None = None, target_epsilon: float | None = None, mode: str = "ghost",
    max_physical_batch_size: int | None = None,
) -> PrivateTraining:
    """Wrap model, optimiser and loader for DP-SGD; the noise is given or calibrated to `target_epsilon`."""
    common = dict(
        module=net,
        optimizer=optimizer,
        data_loader=loader,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=opacus_mode(net, mode),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")  # seeded RNGs are the point here
        engine = PrivacyEngine(accountant=ACCOUNTANT)
        if target_epsilon is not None:
            wrapped, dp_optimizer, *_, dp_loader = engine.make_private_with_epsilon(
                target_epsilon=target_epsilon, target_delta=delta, epochs=epochs, **common
            )
        else:
            wrapped, dp_optimizer, *_, dp_loader = engine.make_private(noise_multiplier=noise_multiplier, **common)
    physical = dp_loader if max_physical_batch_size is None else PhysicalBatches(
        dp_loader, max_physical_batch_size, dp_optimizer)
    return PrivateTraining(
        net=wrapped,
        optimizer=dp_optimizer,
        poisson_loader=dp_loader,
        loader=physical,
        engine=engine,
        delta=delta,
        noise_multiplier=float(dp_optimizer.noise_multiplier),
        mode=mode,
    )
