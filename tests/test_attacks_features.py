"""Attack representations and per-image statistics against direct per-pixel numpy computations."""

import numpy as np
import pytest
import torch

from benchmark.attacks import features, statistics
from benchmark.errors import SegleakError

B, C, H, W = 3, 5, 6, 7


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, H, W, generator=g) * 4
    logits[0, :, 0, :] = torch.tensor([20.0, 0, 0, 0, 0])[:, None]  # p ~ 2e-9 for classes 1..4
    probs = torch.softmax(logits, dim=1)
    probs[1, 2, 1, 1] = 0.0  # an exact zero posterior
    labels = torch.randint(0, C, (B, H, W), generator=g)
    labels[0, 0, :] = 3  # true class with near-zero probability
    labels[1, 1, 1] = 2  # true class with zero probability
    labels[:, 2, :3] = 255
    labels[2] = 255  # an image with no labelled pixel
    return probs, labels


def _slm_numpy(probs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    p, y = probs.numpy(), labels.numpy()
    out = np.zeros((B, 1, H, W), dtype=np.float64)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                if y[b, i, j] != 255:
                    out[b, 0, i, j] = -np.log(max(float(p[b, y[b, i, j], i, j]), features.EPS))
    return out


def test_structured_loss_map_matches_per_pixel_numpy() -> None:
    probs, labels = _inputs()
    slm = features.structured_loss_map(probs, labels)
    assert slm.shape == (B, 1, H, W)
    expected = _slm_numpy(probs, labels)
    np.testing.assert_allclose(slm.numpy(), expected, rtol=1e-6, atol=1e-5)
    assert slm[1, 0, 1, 1] == pytest.approx(-np.log(features.EPS), rel=1e-6)  # clipped at 1e-30: 69.08, finite
    assert (slm[:, 0][labels == 255] == 0).all()
    assert 19 < slm[0, 0, 0, 0] < 21  # near-zero p_y above EPS is not clipped


def test_concatenation_and_posterior() -> None:
    probs, labels = _inputs()
    cat = features.concatenation(probs, labels)
    assert cat.shape == (B, 2 * C, H, W)
    assert torch.equal(cat[:, :C], probs)
    onehot = cat[:, C:]
    valid = labels != 255
    assert torch.equal(onehot.sum(dim=1), valid.float())
    assert torch.equal(onehot.argmax(dim=1)[valid], labels[valid])
    assert torch.equal(features.posterior_only(probs, labels), probs)
    log_probs = _log(probs)
    for name, channels in {"slm": 1, "concat": 2 * C, "posterior": C}.items():
        assert features.representation(name, log_probs, labels).shape[1] == channels
    assert torch.allclose(features.representation("concat", log_probs, labels), cat, atol=1e-6)
    np.testing.assert_allclose(features.representation("slm", log_probs, labels).numpy(), _slm_numpy(probs, labels),
                               rtol=1e-5, atol=1e-5)


def _log(probs: torch.Tensor) -> torch.Tensor:
    return probs.clamp_min(features.EPS).log()


def test_hard_slm_is_scaled_and_others_are_not() -> None:
    probs, labels = _inputs()
    log_probs = _log(probs)
    soft = features.representation("slm", log_probs, labels)
    assert torch.allclose(features.representation("slm", log_probs, labels, hard=True), soft / 50)
    cat = features.representation("concat", log_probs, labels)
    assert torch.equal(features.representation("concat", log_probs, labels, hard=True), cat)


def test_half_precision_probabilities_never_give_inf() -> None:
    probs, labels = _inputs()
    slm = features.structured_loss_map(probs.half(), labels)
    assert torch.isfinite(slm).all() and slm.max() <= -np.log(features.EPS) + 1e-3


def test_release_keeps_losses_near_one_and_near_zero(tmp_path) -> None:
    """Issue 11: p_y = 1 - 1e-5 and p_y = 1e-9, written as a release and read back, give an SLM within 1% of
    -log p_y at both ends (float16 probabilities would have read 0 and a rounded value)."""
    from benchmark.models.release import Released, load_released, save_released

    p = torch.tensor([1 - 1e-5, 1e-9], dtype=torch.float64)
    log_probs = torch.full((2, 2, 1, 1), 0.0, dtype=torch.float64)
    log_probs[:, 0, 0, 0] = p.log()
    log_probs[:, 1, 0, 0] = torch.log1p(-p)  # the other class takes the rest
    labels = torch.zeros(2, 1, 1, dtype=torch.uint8)
    save_released(Released(["a", "b"], log_probs.float(), labels), tmp_path / "r.npz")
    back = load_released(tmp_path / "r.npz")
    slm = features.representation("slm", back.log_probs, back.labels.long())[:, 0, 0, 0].double()
    np.testing.assert_allclose(slm.numpy(), (-p.log()).numpy(), rtol=0.01)
    assert float(statistics.mean_pixel_loss(back.log_probs.float(), back.labels.long())[0]) > 0


def test_bad_inputs_raise() -> None:
    probs, labels = _inputs()
    with pytest.raises(SegleakError):
        features.representation("nope", probs, labels)
    with pytest.raises(SegleakError):
        features.structured_loss_map(probs, labels[:, :-1])
    bad = labels.clone()
    bad[0, 0, 0] = C  # neither a class nor ignore
    with pytest.raises(SegleakError):
        features.structured_loss_map(probs, bad)


def test_statistics_match_numpy() -> None:
    probs, labels = _inputs(1)
    p, y = probs.numpy().astype(np.float64), labels.numpy()
    log_probs = _log(probs)
    loss = statistics.mean_pixel_loss(log_probs, labels).numpy()
    acc = statistics.pixel_accuracy(log_probs, labels).numpy()
    conf = statistics.logit_confidence(log_probs, labels).numpy()
    slm = _slm_numpy(probs, labels)[:, 0]
    for b in range(2):
        valid = y[b] != 255
        py = np.clip(np.take_along_axis(p[b], np.where(valid, y[b], 0)[None], 0)[0][valid], 1e-30, 1 - 2**-24)
        assert loss[b] == pytest.approx(slm[b][valid].mean(), rel=1e-6)
        assert acc[b] == pytest.approx((p[b].argmax(0) == y[b])[valid].mean())
        assert conf[b] == pytest.approx(np.mean(np.log(py) - np.log1p(-py)), rel=1e-5)
    # image 2 has no labelled pixel: documented NaN
    assert np.isnan(loss[2]) and np.isnan(acc[2]) and np.isnan(conf[2])


def test_slm_of_float16_log_posteriors_is_exact_without_converting_every_channel() -> None:
    """The grid's SLM gathers the label's channel of the float16 release and converts only that one: the same
    numbers as converting the whole map first (float16 -> float32 is exact)."""
    gen = torch.Generator().manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(2, 5, 6, 7, generator=gen) * 4, dim=1).half()
    labels = torch.randint(0, 5, (2, 6, 7), generator=gen)
    labels[0, 0, 0] = features.IGNORE_INDEX
    slm = features.representation("slm", log_probs, labels)
    assert slm.dtype == torch.float32
    assert torch.equal(slm, features.loss_map(log_probs.float(), labels))
