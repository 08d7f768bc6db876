"""mmseg configs and the segmentor builder: every architecture resolves, tiny ones build and run, GN for DP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.errors import SegleakError
from benchmark.models.builder import build_segmentor, gn_groups, list_architectures, load_model_config

TINY = ["pspnet_tiny", "upernet_tiny", "deeplabv3plus_tiny", "segformer_tiny"]
PAPER = ["pspnet_paper", "upernet_paper", "deeplabv3plus_paper", "segformer_paper"]


def _walk(cfg):
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            yield from _walk(value)


def test_every_size_of_every_architecture_is_listed():
    assert set(TINY + PAPER) <= set(list_architectures())


@pytest.mark.parametrize("arch", TINY + PAPER)
def test_configs_download_nothing_and_use_plain_bn(arch):
    cfg = load_model_config(arch)
    pairs = list(_walk(cfg))
    assert cfg.get("pretrained") is None
    assert all(v is None for k, v in pairs if k in ("init_cfg", "pretrained"))
    norms = [v["type"] for k, v in pairs if k == "norm_cfg"]
    assert norms and "SyncBN" not in norms
    assert cfg.data_preprocessor.size is None and cfg.data_preprocessor.seg_pad_val == 255
    assert cfg.decode_head.num_classes == 19


@pytest.mark.parametrize("arch", TINY)
@pytest.mark.parametrize("norm", ["BN", "GN"])
def test_tiny_builds_and_runs(arch, norm):
    torch.manual_seed(0)
    model = build_segmentor(arch, norm=norm, num_classes=7)
    assert not model.with_auxiliary_head
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    has_gn = any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert (has_bn, has_gn) == ((True, False) if norm == "BN" else (False, True))
    out = model(torch.rand(2, 3, 64, 128) * 255, mode="tensor")
    assert out.shape[:2] == (2, 7)
    assert out.shape[-2:] in {(8, 16), (16, 32)}  # 1/8 (PSPNet) or 1/4 (the others)


def test_gn_groups_divide_every_norm_layer():
    model = build_segmentor("deeplabv3plus_tiny", norm="GN")
    groups = {m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)}
    assert len(groups) == 1
    g = groups.pop()
    assert g == gn_groups(build_segmentor("deeplabv3plus_tiny"))
    assert all(m.num_channels % g == 0 for m in model.modules() if isinstance(m, nn.GroupNorm))


def test_segformer_keeps_layernorm_under_gn():
    model = build_segmentor("segformer_tiny", norm="GN")
    assert any(isinstance(m, nn.LayerNorm) for m in model.backbone.modules())


def test_unknown_architecture_and_norm_are_named():
    with pytest.raises(SegleakError, match="resnet_huge.*pspnet_tiny"):
        build_segmentor("resnet_huge")
    with pytest.raises(SegleakError, match="'LN'"):
        build_segmentor("pspnet_tiny", norm="LN")
