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
    np.testing.assert_allclose(slm.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert slm[1, 0, 1, 1] == pytest.approx(-np.log(features.EPS), rel=1e-6)  # clipped, finite
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
    for name, channels in {"slm": 1, "concat": 2 * C, "posterior": C}.items():
        assert features.representation(name, probs, labels).shape[1] == channels
        assert features.representation_channels(name, C) == channels


def test_hard_slm_is_scaled_and_others_are_not() -> None:
    probs, labels = _inputs()
    soft = features.representation("slm", probs, labels)
    assert torch.allclose(features.representation("slm", probs, labels, hard=True), soft / 50)
    cat = features.representation("concat", probs, labels)
    assert torch.equal(features.representation("concat", probs, labels, hard=True), cat)


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
    loss = statistics.mean_pixel_loss(probs, labels).numpy()
    acc = statistics.pixel_accuracy(probs, labels).numpy()
    conf = statistics.logit_confidence(probs, labels).numpy()
    slm = _slm_numpy(probs, labels)[:, 0]
    for b in range(2):
        valid = y[b] != 255
        py = np.clip(np.take_along_axis(p[b], np.where(valid, y[b], 0)[None], 0)[0][valid], 1e-12, 1 - 1e-12)
        assert loss[b] == pytest.approx(slm[b][valid].mean(), rel=1e-6)
        assert acc[b] == pytest.approx((p[b].argmax(0) == y[b])[valid].mean())
        assert conf[b] == pytest.approx(np.mean(np.log(py) - np.log1p(-py)), rel=1e-5)
    # image 2 has no labelled pixel: documented NaN
    assert np.isnan(loss[2]) and np.isnan(acc[2]) and np.isnan(conf[2])
