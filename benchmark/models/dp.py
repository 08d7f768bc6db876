"""DP-SGD for mmseg segmentors with Opacus 1.6 (no DPLightningDataModule: it subclasses the old `pytorch_lightning` namespace and fails with ours).

What each architecture family needs (measured with torch 2.13, mmseg 1.2.2, opacus 1.6):
- ResNet-based (PSPNet, UPerNet, DeepLabV3+): GroupNorm (`build_segmentor(arch, norm="GN")`) and
  `grad_sample_mode="ew"` (ExpandedWeights). The "hooks" mode fails on mmseg's in-place residual add
  (`out += identity`, "Output 0 of BackwardHookFunction is a view and is being modified inplace"), even with
  every ReLU made non-in-place.
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

The loss must be a mean over images of a per-image loss (the module does that), sampling is Poisson
(`DPDataLoader`, expected batch = the configured batch size), and the privacy spent is read from the RDP
accountant after training.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from opacus import GradSampleModule, PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.layers import DPMultiheadAttention
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from opacus.validators.multihead_attention import fix as fix_multihead_attention
import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from benchmark.errors import SegleakError

ACCOUNTANT = "rdp"


def grad_sample_mode(net: nn.Module) -> str:
    """'hooks' for attention models (after `prepare_for_dp`), 'ew' for the convolutional ones (see docstring)."""
    has_attention = any(isinstance(m, (nn.MultiheadAttention, DPMultiheadAttention)) for m in net.modules())
    return "hooks" if has_attention else "ew"


def _contiguous_inputs(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def prepare_for_dp(net: nn.Module) -> None:
    """Make `net` trainable by Opacus in place (before its optimizer is built: parameters are replaced)."""
    for module in net.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            module.register_forward_pre_hook(_contiguous_inputs)
        if hasattr(module, "inplace") and isinstance(module.inplace, bool):
            module.inplace = False
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


@dataclass
class PrivateTraining:
    """What Opacus hands back: the per-sample-gradient model, the noisy optimiser, the Poisson loader."""

    net: GradSampleModule
    optimizer: DPOptimizer
    loader: DPDataLoader
    engine: PrivacyEngine
    delta: float
    noise_multiplier: float

    def epsilon(self) -> float:
        """Privacy spent so far at `delta` (0 before any step; inf without noise: no guarantee at all)."""
        if self.noise_multiplier == 0:
            return math.inf
        return float(self.engine.get_epsilon(self.delta))


def make_private(
    net: nn.Module, optimizer: Optimizer, loader: DataLoader, *, max_grad_norm: float, delta: float, epochs: int,
    noise_multiplier: float | None = None, target_epsilon: float | None = None,
) -> PrivateTraining:
    """Wrap model, optimiser and loader for DP-SGD; the noise is given or calibrated to `target_epsilon`."""
    common = dict(
        module=net,
        optimizer=optimizer,
        data_loader=loader,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=grad_sample_mode(net),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")  # seeded RNGs are the point here
        engine = PrivacyEngine(accountant=ACCOUNTANT)
        if target_epsilon is not None:
            wrapped, dp_optimizer, dp_loader = engine.make_private_with_epsilon(
                target_epsilon=target_epsilon, target_delta=delta, epochs=epochs, **common
            )
        else:
            wrapped, dp_optimizer, dp_loader = engine.make_private(noise_multiplier=noise_multiplier, **common)
    return PrivateTraining(
        net=wrapped,
        optimizer=dp_optimizer,
        loader=dp_loader,
        engine=engine,
        delta=delta,
        noise_multiplier=float(dp_optimizer.noise_multiplier),
    )
