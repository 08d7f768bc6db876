"""Per-image gradient norms of Conv2d and Linear weights for Opacus' fast gradient clipping (`grad_sample_mode=
"ghost"`), by mixed ghost clipping (Bu et al., NeurIPS 2022): per layer the cheaper of two exact routes.

A layer's weight gradient for image n is G_n^T A_n, with A_n `[T, D]` its (unfolded) input and G_n `[T, P]` the
gradient of its output over T positions (the pixels of a convolution's output map, the tokens of a Linear).
- ghost norm: ||G_n^T A_n||^2 = sum_ts (A_n A_n^T)_ts (G_n G_n^T)_ts, from two `[T, T]` Gram matrices:
  about T^2 (D + P) multiply-adds per image, T^2 floats;
- per-sample gradient: G_n^T A_n itself, then its norm: T D P multiply-adds, D P floats (one layer at a time,
  freed at once, unlike the `ew` mode that holds every layer's).
The ghost norm is taken where T (D + P) < D P, i.e. where the output map is small against the weight (deep layers
of a backbone); there its memory, T^2 < D P, is smaller too. Grouped convolutions (DeepLabV3+'s depthwise ones)
take the per-sample route group by group (their D P per group is tiny).

Both routes compute in float32 whatever the autocast dtype of the activations and gradients, so the clipping
factor is not rounded to bf16. Importing this module registers the samplers (replacing Opacus' Linear one,
which always takes the ghost route: `[T, T]` Grams of SegFormer's 16k-token stages would not fit).
"""

from __future__ import annotations

import torch
from opacus.grad_sample.utils import register_norm_sampler
from opacus.utils.tensor_utils import unfold2d
from torch import Tensor, nn


def ghost_is_cheaper(positions: int, fan_in: int, fan_out: int) -> bool:
    """Whether the Gram route costs fewer multiply-adds than the per-sample gradient for one `[P, D]` weight."""
    return positions * (fan_in + fan_out) < fan_in * fan_out


def weight_norms(a: Tensor, g: Tensor) -> Tensor:
    """`[N]` Frobenius norms of the per-image weight gradients G_n^T A_n, `a` `[N, T, D]`, `g` `[N, T, P]`."""
    a, g = a.float(), g.float()
    if ghost_is_cheaper(a.shape[1], a.shape[2], g.shape[2]):
        squared = (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).flatten(1).sum(1)
        return squared.clamp(min=0).sqrt()
    return torch.bmm(g.transpose(1, 2), a).flatten(1).norm(dim=1)


def _bias_norms(g: Tensor) -> Tensor:
    """`[N]` norms of per-image bias gradients: the output gradient summed over positions, `g` `[N, T, P]`."""
    return g.float().sum(1).norm(dim=1)


@register_norm_sampler(nn.Conv2d)
def conv2d_norm_sample(layer: nn.Conv2d, activations: list[Tensor], backprops: Tensor) -> dict[nn.Parameter, Tensor]:
    """Per-image gradient norms of a Conv2d's weight (mixed ghost clipping, see the module docstring) and bias."""
    n, groups = backprops.shape[0], layer.groups
    cols = unfold2d(activations[0], kernel_size=layer.kernel_size, padding=layer.padding, stride=layer.stride,
                    dilation=layer.dilation)  # [N, C_in k_h k_w, T], input channel major
    positions = cols.shape[-1]
    g = backprops.reshape(n, groups, -1, positions).transpose(2, 3)  # [N, groups, T, P/groups]
    a = cols.reshape(n, groups, -1, positions).transpose(2, 3)  # [N, groups, T, D/groups]
    out = {}
    if layer.weight.requires_grad:
        if groups == 1:
            out[layer.weight] = weight_norms(a[:, 0], g[:, 0])
        else:
            out[layer.weight] = torch.einsum("nktp,nktd->nkpd", g.float(), a.float()).flatten(1).norm(dim=1)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = _bias_norms(backprops.flatten(2).transpose(1, 2))
    return out


@register_norm_sampler(nn.Linear)
def linear_norm_sample(layer: nn.Linear, activations: list[Tensor], backprops: Tensor) -> dict[nn.Parameter, Tensor]:
    """Per-image gradient norms of a Linear's weight and bias; every axis between batch and features is a position."""
    n = backprops.shape[0]
    a = activations[0].reshape(n, -1, activations[0].shape[-1])
    g = backprops.reshape(n, -1, backprops.shape[-1])
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = weight_norms(a, g)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = _bias_norms(g)
    return out
