"""Build mmsegmentation segmentors from the project's configs (`mmseg_configs/<arch>.py`).

An architecture is named by its config file's stem ("pspnet_tiny", "upernet_paper"). The configs use BN;
`norm="GN"` rewrites every BN norm layer of the model to GroupNorm, because Opacus cannot compute per-sample
gradients through BatchNorm (it mixes samples). The GN group count is chosen as the largest of 32, 16, 8, 4, 2,
1 that divides the channel count of every norm layer, found by building the BN model once and reading its
BatchNorm layers (so no per-architecture table has to be kept in sync with the configs).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from torch import nn

from benchmark.errors import SegleakError
from benchmark.paths import project_root

NORMS = ("BN", "GN")
GN_GROUP_CANDIDATES = (32, 16, 8, 4, 2, 1)
_BN_TYPES = {"BN", "BN2d", "SyncBN"}


def configs_dir() -> Path:
    """Where the architecture configs live (the project is installed editable)."""
    return project_root() / "mmseg_configs"


def list_architectures() -> list[str]:
    """Names accepted by `build_segmentor`: every top-level config in `mmseg_configs/`."""
    return sorted(p.stem for p in configs_dir().glob("*.py"))


def load_model_config(arch: str, *, num_classes: int = 19) -> Any:
    """The `model` dict of an architecture's config (an mmengine ConfigDict), with `num_classes` applied."""
    known = list_architectures()
    if arch not in known:
        raise SegleakError(f"unknown architecture {arch!r}; known: {', '.join(known)}")
    if num_classes < 2:
        raise SegleakError(f"num_classes must be >= 2, got {num_classes}")
    from mmengine.config import Config

    model_cfg = copy.deepcopy(Config.fromfile(str(configs_dir() / f"{arch}.py")).model)
    for head in ("decode_head", "auxiliary_head"):
        if model_cfg.get(head):
            model_cfg[head]["num_classes"] = num_classes
    return model_cfg


def _with_norm(cfg: Any, norm_cfg: dict) -> Any:
    """A copy of `cfg` with every BN-type `norm_cfg` replaced by `norm_cfg` (other norms, e.g. LN, kept)."""
    if isinstance(cfg, dict):
        out = {}
        for key, value in cfg.items():
            if key == "norm_cfg" and isinstance(value, dict) and value.get("type") in _BN_TYPES:
                out[key] = dict(norm_cfg)
            else:
                out[key] = _with_norm(value, norm_cfg)
        return type(cfg)(out)
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_with_norm(v, norm_cfg) for v in cfg)
    return cfg


def _build(model_cfg: Any) -> nn.Module:
    from mmengine.logging import MMLogger
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    model = MODELS.build(model_cfg)
    # mmseg's own initialisation (Kaiming convs, unit norms); its per-parameter INFO report is muted.
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model


def gn_groups(model: nn.Module) -> int:
    """Largest candidate group count dividing the channels of every BatchNorm layer of `model`."""
    channels = [m.num_features for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for groups in GN_GROUP_CANDIDATES:
        if all(c % groups == 0 for c in channels):
            return groups
    return 1


def build_segmentor(arch: str, *, norm: str = "BN", num_classes: int = 19) -> nn.Module:
    """An mmseg `EncoderDecoder` for `arch`, randomly initialised, with BN or GroupNorm layers."""
    if norm not in NORMS:
        raise SegleakError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
    model_cfg = load_model_config(arch, num_classes=num_classes)
    model = _build(model_cfg)
    if norm == "BN":
        return model
    groups = gn_groups(model)
    return _build(_with_norm(model_cfg, dict(type="GN", num_groups=groups, requires_grad=True)))
