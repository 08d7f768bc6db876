"""Output-side defenses keep valid posteriors and do what they promise."""

import pytest
import torch

from benchmark.defenses import output
from benchmark.errors import SegleakError


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


def test_apply_output_defense_dispatch_and_validation() -> None:
    p = _probs()
    assert output.apply_output_defense("none", p, {}) is p
    assert torch.equal(output.apply_output_defense("argmax", p, {}), output.argmax(p))
    assert torch.equal(output.apply_output_defense("topk", p, {"k": 2}), output.topk(p, 2))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(
        output.apply_output_defense("gaussian", p, {"sigma": 0.2}, g1), output.gaussian(p, 0.2, g2)
    )
    for name, params in [
        ("blur", {}),
        ("gaussian", {"sigma": -1.0}),
        ("gaussian", {}),
        ("temperature", {"t": 0.0}),
        ("topk", {"k": 0}),
        ("topk", {"k": 20}),
        ("argmax", {"k": 1}),
    ]:
        with pytest.raises(SegleakError):
            output.apply_output_defense(name, p, params)
    assert output.is_hard("argmax") and not output.is_hard("gaussian") and not output.is_hard("none")
