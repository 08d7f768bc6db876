"""Every registered defense passes the same contract (declared side, parameters and validation; output
defenses keep valid, reproducible log-posteriors), and the output defenses do what they promise."""

import pytest
import torch

from benchmark.defenses import build_defense, output, output_transform
from benchmark.defenses.base import LOG_FLOOR
from benchmark.errors import SegleakError
from benchmark.registry import DEFENSES


def _probs(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(2, 19, 5, 6, generator=g) * 3, dim=1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-30).log()).sum(dim=1)


def test_argmax_is_one_hot_of_top1() -> None:
    p = _probs()
    out = output.argmax(p)
    assert out.shape == p.shape and out.dtype == p.dtype
    assert torch.equal(out.sum(dim=1), torch.ones(2, 5, 6))
    assert torch.equal(out.argmax(dim=1), p.argmax(dim=1))
    assert set(out.unique().tolist()) == {0.0, 1.0}


def test_gaussian_valid_noisy_and_reproducible() -> None:
    p = _probs()
    out = output.gaussian(p, 0.1, generator=torch.Generator().manual_seed(3))
    assert (out >= 0).all()
    assert torch.allclose(out.sum(dim=1), torch.ones(2, 5, 6), atol=1e-5)
    assert not torch.allclose(out, p, atol=1e-3)
    again = output.gaussian(p, 0.1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    other = output.gaussian(p, 0.1, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(out, other)


def test_temperature() -> None:
    p = _probs()
    assert torch.allclose(output.temperature(p, 1.0), p, atol=1e-6)
    hot = output.temperature(p, 3.0)
    assert torch.allclose(hot.sum(dim=1), torch.ones(2, 5, 6), atol=1e-5)
    assert (_entropy(hot) > _entropy(p)).all()
    assert torch.equal(hot.argmax(dim=1), p.argmax(dim=1))


def test_topk_keeps_exactly_k() -> None:
    p = _probs()
    out = output.topk(p, 3)
    assert torch.equal((out > 0).sum(dim=1), torch.full((2, 5, 6), 3))
    assert torch.allclose(out.sum(dim=1), torch.ones(2, 5, 6), atol=1e-6)
    kept = out > 0
    smallest_kept = torch.where(kept, p, torch.inf).amin(dim=1)
    largest_dropped = torch.where(kept, -torch.inf, p).amax(dim=1)
    assert (smallest_kept >= largest_dropped).all()
    assert torch.allclose(out[kept], (p / torch.where(kept, p, 0).sum(dim=1, keepdim=True))[kept])


OUTPUT = [n for n in DEFENSES.names() if DEFENSES.lookup(n).side == "output"]
TRAINING = [n for n in DEFENSES.names() if DEFENSES.lookup(n).side == "training"]


def _build(name: str, **overrides):
    cls = DEFENSES.lookup(name)
    return cls(**{**cls.example, **overrides})


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_declares_side_params_and_order(name: str) -> None:
    cls = DEFENSES.lookup(name)
    defense = _build(name)
    assert defense.name == name and cls.side in ("output", "training") and isinstance(cls.order, int)
    assert (cls.side == "output") == defense.output_side and defense.label.startswith(name)
    assert set(cls.example) <= set(cls.params)
    with pytest.raises(SegleakError):
        cls(**{**cls.example, "no_such_parameter": 1})
    for key, param in cls.params.items():  # a wrong type is refused, with the key named
        with pytest.raises(SegleakError, match=key):
            cls(**{**cls.example, key: "not a value"})


@pytest.mark.parametrize("name", OUTPUT)
def test_output_defenses_keep_valid_log_posteriors(name: str) -> None:
    log_p = _probs().log()
    out = _build(name).apply(log_p, generator=torch.Generator().manual_seed(0))
    assert out.shape == log_p.shape and torch.isfinite(out).all() and (out >= LOG_FLOOR - 1e-4).all()
    assert (out.exp() <= 1.0 + 1e-6).all()  # each a probability (rounding need not sum to exactly 1)
    again = _build(name).apply(log_p, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded, so reproducible


def test_log_space_defenses_match_the_probability_space_api() -> None:
    p = _probs()
    assert torch.allclose(_build("argmax").apply(p.log()).exp(), output.argmax(p), atol=1e-6)
    assert torch.allclose(_build("temperature", t=3.0).apply(p.log()).exp(), output.temperature(p, 3.0), atol=1e-5)
    assert torch.allclose(_build("topk", k=2).apply(p.log()).exp(), output.topk(p, 2), atol=1e-5)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.allclose(_build("gaussian", sigma=0.2).apply(p.log(), g1).exp(), output.gaussian(p, 0.2, g2), atol=1e-5)


def test_label_only_releases() -> None:
    assert _build("argmax").label_only and _build("topk", k=1).label_only
    assert not _build("topk", k=2).label_only and not _build("gaussian").label_only
    p = _probs()
    # k = 1 releases exactly the argmax one-hot map
    assert torch.allclose(_build("topk", k=1).apply(p.log()), _build("argmax").apply(p.log()))


def test_rounding_releases_rounded_posteriors() -> None:
    p = _probs()
    out = _build("rounding", decimals=2).apply(p.log()).exp()
    kept = out > 1e-20
    assert torch.allclose(out[kept], torch.round(p.double(), decimals=2).float()[kept], atol=1e-6)
    assert torch.equal(kept, torch.round(p.double(), decimals=2) > 0)  # 0 is released as the floor


def test_validation_of_output_defenses() -> None:
    for name, params in [("gaussian", {"sigma": -1.0}), ("gaussian", {}), ("temperature", {"t": 0.0}),
                         ("topk", {"k": 0}), ("argmax", {"k": 1}), ("rounding", {"decimals": 9})]:
        with pytest.raises(SegleakError):
            DEFENSES.lookup(name)(**params)
    with pytest.raises(SegleakError, match="unknown defense 'blur'"):
        build_defense("blur")
    with pytest.raises(SegleakError, match="more than the 19 classes"):
        _build("topk", k=20).check_classes(19)
    with pytest.raises(SegleakError, match="training side"):
        build_defense("argmax", side="training")
    with pytest.raises(SegleakError, match="exactly one"):
        build_defense("dp_sgd", {"max_grad_norm": 1.0})
    assert output_transform({"name": "none", "params": {}}) is None
    assert output_transform({"name": "dp_sgd", "params": _build("dp_sgd").values}) is None
