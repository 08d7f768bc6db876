"""Reference-model attacks: closed-form cases (statistics drawn from known Gaussians, hand-computed RMIA and
calibrated loss), the per-image signals, and every reference attack end to end on simulated banks: members
found in a leaky release, chance without a signal (the placebo), label-only releases read, deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from benchmark.attacks.base import AttackerData, Observed
from benchmark.attacks.components.dense_lira import shrunk_correlation
from benchmark.attacks.reference import Bank, BankView, moments
from benchmark.attacks.signals import MIN_PIXELS, group_signals
from benchmark.attacks.statistics import logit_confidence, mean_pixel_loss
from benchmark.defenses.output import log_one_hot
from benchmark.errors import SegleakError
from benchmark.metrics import membership_metrics
from benchmark.models.release import Released
from benchmark.registry import ATTACKS

REFERENCE = [n for n in ATTACKS.names() if "references" in ATTACKS.lookup(n).needs]
C, H, W = 4, 12, 12


def attack(name: str, **values):
    return ATTACKS.lookup(name)(**values)


def view_of(refs: np.ndarray, masks: np.ndarray, target: np.ndarray) -> BankView:
    return BankView(refs, masks, np.arange(refs.shape[1]), target)


# --- closed forms ------------------------------------------------------------------------------------------

def test_offline_lira_is_the_one_sided_test_against_the_out_gaussian() -> None:
    rng = np.random.default_rng(0)
    refs = rng.normal(rng.normal(0, 2, 5)[None], 0.7, (6, 5))  # 6 OUT references on 5 images
    masks = np.zeros_like(refs, bool)
    target = rng.normal(0, 2, 5)
    mu = refs.mean(0)
    pooled = ((refs - mu) ** 2).sum() / (5 * (6 - 1))  # within-image variance pooled over images
    expected = norm.logcdf((target - mu) / np.sqrt(pooled))
    got = attack("lira", variant="offline").bank_scores(view_of(refs, masks, target))
    assert np.allclose(got, expected, rtol=1e-12)
    own = refs.std(0, ddof=1)
    got = attack("lira", variant="offline", variance="per_example").bank_scores(view_of(refs, masks, target))
    assert np.allclose(got, norm.logcdf((target - mu) / own), rtol=1e-12)


def test_online_lira_is_the_analytic_likelihood_ratio_of_known_gaussians() -> None:
    rng = np.random.default_rng(1)
    mu_out, mu_in, sd = rng.normal(0, 1, 4), rng.normal(1.5, 1, 4), 0.8
    k = 4000  # enough references that the fitted Gaussians are the true ones
    masks = np.arange(k)[:, None] % 2 == 0
    refs = np.where(masks, mu_in, mu_out) + rng.normal(0, sd, (k, 4))
    target = rng.normal(0.5, 1, 4)
    truth = norm.logpdf(target, mu_in, sd) - norm.logpdf(target, mu_out, sd)
    got = attack("lira", variant="online").bank_scores(view_of(refs, np.broadcast_to(masks, refs.shape).copy(), target))
    assert np.allclose(got, truth, atol=0.05)
    # and exactly the same formula with the bank's own estimates
    m = moments(refs, np.broadcast_to(masks, refs.shape))
    sd_hat = np.sqrt(m.var_all[0])
    exact = norm.logpdf(target, m.mean_in[:, 0], sd_hat) - norm.logpdf(target, m.mean_out[:, 0], sd_hat)
    assert np.allclose(got, exact, rtol=1e-12)


def test_dense_lira_in_one_dimension_is_lira_with_a_global_variance() -> None:
    rng = np.random.default_rng(2)
    refs = rng.normal(rng.normal(0, 1, 7)[None], 0.5, (8, 7))
    masks = rng.random((8, 7)) < 0.5
    refs = refs + 1.0 * masks
    target = rng.normal(0.3, 1, 7)
    for variant in ("offline", "online"):
        scalar = attack("lira", variant=variant).bank_scores(view_of(refs, masks, target))
        dense = attack("dense_lira", variant=variant).bank_scores(view_of(refs[..., None], masks, target[:, None]))
        assert np.allclose(dense, scalar, rtol=1e-10), variant


def test_dense_lira_online_is_the_analytic_ratio_for_a_known_correlated_gaussian() -> None:
    rng = np.random.default_rng(3)
    d, k, images = 4, 3000, 3
    loading = np.array([[0.9], [0.8], [0.7], [0.0]])
    corr = loading @ loading.T + np.diag(1 - (loading**2).ravel())
    sd = np.array([0.5, 1.0, 1.5, 0.7])
    sigma = corr * sd[:, None] * sd[None]
    mu_out, gap = rng.normal(0, 1, (images, d)), np.array([0.6, 0.2, 0.1, 0.5])
    masks = (np.arange(k)[:, None] + np.arange(images)[None]) % 2 == 0
    noise = rng.multivariate_normal(np.zeros(d), sigma, (k, images))
    refs = mu_out[None] + gap * masks[..., None] + noise
    target = mu_out + rng.normal(0, 1, (images, d))
    truth = np.array([gap @ np.linalg.solve(sigma, v - mu - gap / 2) for v, mu in zip(target, mu_out)])
    got = attack("dense_lira", variant="online", rank=1).bank_scores(view_of(refs, masks, target))
    assert np.allclose(got, truth, rtol=0.1, atol=0.05)
    # the shared correlation is recovered from the pooled residuals: one factor plus the diagonal
    assert np.allclose(shrunk_correlation(noise.reshape(-1, d) / sd, 1), corr, atol=0.05)


def test_dense_lira_uses_only_the_dimensions_an_image_has() -> None:
    rng = np.random.default_rng(4)
    refs = rng.normal(0, 1, (6, 3, 2))
    refs[:, 1, 1] = np.nan  # image 1 has no second class
    masks = np.zeros((6, 3), bool)
    target = rng.normal(0, 1, (3, 2))
    target[1, 1] = np.nan
    scores = attack("dense_lira").bank_scores(view_of(refs, masks, target))
    assert np.isfinite(scores).all()


def test_rmia_counts_population_images_below_the_likelihood_ratio() -> None:
    # two OUT references; log-signals chosen so that every ratio is easy to write down
    refs = np.log(np.array([[0.5, 0.4, 0.2, 0.8, 0.6], [0.7, 0.4, 0.6, 0.8, 0.2]]))
    masks = np.zeros_like(refs, bool)
    target = np.log(np.array([0.9, 0.3]))  # images 0 and 1 scored
    pop_target = np.log(np.array([0.5, 0.8, 0.4]))  # images 2, 3, 4 are the population
    a = 0.5

    def pr(mean_out: float) -> float:
        return (1 + a) / 2 * mean_out + (1 - a) / 2

    lr_x = [0.9 / pr(0.6), 0.3 / pr(0.4)]
    lr_z = [0.5 / pr(0.4), 0.8 / pr(0.8), 0.4 / pr(0.4)]
    view = BankView(refs, masks, np.array([0, 1]), target, np.array([2, 3, 4]), pop_target, np.array([-1, -1]))
    for gamma in (1.0, 1.3):
        scores = attack("rmia", a=a, gamma=gamma).bank_scores(view)
        share = [np.mean([x / z >= gamma for z in lr_z]) for x in lr_x]
        assert np.allclose(np.floor(scores * 3 + 1e-9) / 3, share)  # the count, plus a tie-break below 1/3
        assert scores[0] > scores[1]
    # an image in the population is never compared with itself
    view.self_in_pop = np.array([0, -1])
    scores = attack("rmia", a=a).bank_scores(view)
    assert np.floor(scores[0] * 2 + 1e-9) / 2 == np.mean([lr_x[0] / z >= 1 for z in lr_z[1:]])


def test_calibrated_loss_subtracts_the_out_references_mean_loss() -> None:
    refs = np.array([[-0.2, -1.0], [-0.4, -3.0], [-9.0, -9.0]])
    masks = np.array([[False, False], [False, False], [True, True]])  # the third trained on both: ignored
    target = np.array([-0.1, -1.0])
    scores = attack("calibrated_loss").bank_scores(view_of(refs, masks, target))
    assert np.allclose(scores, [-0.1 - (-0.3), -1.0 - (-2.0)])


# --- signals -----------------------------------------------------------------------------------------------

def _release(logits: torch.Tensor, labels: torch.Tensor, label_only: bool = False, ids: list[str] | None = None) -> Released:
    log_probs = torch.log_softmax(logits, 1)
    if label_only:
        log_probs = log_one_hot(log_probs.argmax(1), logits.shape[1])
    ids = ids or [f"i{n}" for n in range(len(labels))]
    return Released(ids, log_probs, labels.to(torch.uint8), label_only)


def test_signals_match_the_statistics_and_split_by_class() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, C, (3, H, W), generator=g)
    labels[0, :2] = 255
    released = _release(torch.randn(3, C, H, W, generator=g), labels)
    image = group_signals(released, "logit")
    assert np.allclose(image, logit_confidence(released.log_probs, released.labels.long()).numpy())
    assert np.allclose(group_signals(released, "log_prob"), -mean_pixel_loss(released.log_probs, released.labels.long()).numpy())
    by_class = group_signals(released, "logit", "class")
    assert by_class.shape == (3, C)
    lp = released.log_probs.gather(1, labels.clamp(max=C - 1).long()[:, None])[:, 0].double()
    logit = lp - torch.log(-torch.expm1(lp))
    for c in range(C):
        pixels = labels[1] == c
        if pixels.sum() >= MIN_PIXELS:
            assert by_class[1, c] == pytest.approx(logit[1][pixels].mean().item())
    regions = group_signals(released, "logit", "region", regions=2)
    assert regions.shape == (3, 4) and np.isfinite(regions[1]).all()


def test_label_only_signals_read_the_smoothed_pixel_accuracy() -> None:
    labels = torch.zeros(1, H, W, dtype=torch.long)
    logits = torch.zeros(1, C, H, W)
    logits[0, 0, :, : W // 2] = 5.0  # half the pixels right
    logits[0, 1, :, W // 2:] = 5.0
    released = _release(logits, labels, label_only=True)
    n = H * W
    accuracy = (n / 2 + 0.5) / (n + 1)
    assert group_signals(released, "logit")[0] == pytest.approx(np.log(accuracy / (1 - accuracy)))
    assert group_signals(released, "log_prob")[0] == pytest.approx(np.log(accuracy))


def test_small_groups_are_absent_and_an_unlabelled_image_is_an_error() -> None:
    labels = torch.zeros(2, H, W, dtype=torch.long)
    labels[0, 0, : MIN_PIXELS - 1] = 1  # class 1: too few pixels
    released = _release(torch.randn(2, C, H, W), labels)
    by_class = group_signals(released, "logit", "class")
    assert np.isnan(by_class[0, 1]) and np.isfinite(by_class[0, 0])
    labels[1] = 255
    with pytest.raises(SegleakError, match="'i1' has no labelled pixel"):
        group_signals(_release(torch.randn(2, C, H, W), labels), "logit")


# --- end to end on simulated banks --------------------------------------------------------------------------

def simulated_bank(k: int, n_pool: int, n_query: int, signal: float, seed: int = 0, label_only: bool = False) -> tuple[Bank, Observed, np.ndarray]:
    """K references on a pool (random halves) plus query images (never trained on: an offline bank), and a
    target model whose members are the first half of the queries. Each image has its own difficulty; a model
    that trained on an image gives its true class `signal` more logit on it."""
    g = torch.Generator().manual_seed(seed)
    n = n_pool + n_query
    ids = [f"img{i:03d}" for i in range(n)]
    labels = torch.randint(0, C, (n, H, W), generator=g)
    base = torch.randn(n, C, H, W, generator=g)
    difficulty = torch.randn(n, generator=g)

    def model(member: np.ndarray, model_seed: int) -> Released:
        gm = torch.Generator().manual_seed(model_seed)
        boost = torch.from_numpy(member.astype(np.float32)) * signal + difficulty + 0.3 * torch.randn(n, generator=gm)
        logits = base + 0.2 * torch.randn(n, C, H, W, generator=gm)
        logits.scatter_add_(1, labels[:, None], boost[:, None, None, None].expand(n, 1, H, W).contiguous())
        return _release(logits, labels, label_only, ids)

    rng = np.random.default_rng(seed)
    masks = np.zeros((k, n), bool)
    for j in range(k):
        masks[j, rng.permutation(n_pool)[: n_pool // 2]] = True
    pool = ids[:n_pool]
    bank = Bank(ids, [model(masks[j], 1000 + j) for j in range(k)], masks, pool, pool)
    member = np.zeros(n, bool)
    member[n_pool: n_pool + n_query // 2] = True
    target = model(member, 7)
    queries = target.select(ids[n_pool:])
    return bank, Observed(queries, population=target.select(pool)), member[n_pool:]


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_attack_finds_members_and_sits_at_chance_without_a_signal(name: str, tmp_path: Path) -> None:
    for signal, placebo in ((1.5, False), (0.0, True)):
        bank, target, member = simulated_bank(8, 60, 80, signal)
        out = tmp_path / f"{signal}"
        out.mkdir()
        fitted = attack(name).fit_and_calibrate(AttackerData(extras={"bank": bank}), out, 0, 0.25)
        assert len(fitted.calibration_scores) == 8 * 60 and np.isfinite(fitted.calibration_scores).all()
        scores = attack(name).score(fitted.state, out, Observed(target.released, population=target.population), 0)
        metrics = membership_metrics(scores, member, seed=0)
        if placebo:
            assert metrics["auc_ci_low"] <= 0.5 <= metrics["auc_ci_high"], metrics["auc"]
        else:
            assert metrics["auc"] > 0.85
            assert membership_metrics(fitted.calibration_scores, fitted.calibration_is_member, n_bootstrap=0)["auc"] > 0.75


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_attack_reads_label_only_outputs_and_is_deterministic(name: str, tmp_path: Path) -> None:
    bank, target, member = simulated_bank(6, 40, 60, 3.0, label_only=True)
    runs = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        fitted = attack(name).fit_and_calibrate(AttackerData(extras={"bank": bank}), tmp_path / sub, 0, 0.25)
        runs.append(attack(name).score(fitted.state, tmp_path / sub, target, 0))
    assert np.array_equal(*runs) and np.isfinite(runs[0]).all()
    assert membership_metrics(runs[0], member, n_bootstrap=0)["auc"] > 0.6
    confident = Observed(simulated_bank(6, 40, 60, 3.0)[1].released)
    with pytest.raises(SegleakError, match="same output defense"):
        attack(name).score(fitted.state, tmp_path / "b", confident, 0)


def test_leave_one_out_never_puts_the_pseudo_target_in_its_own_bank() -> None:
    bank, _, _ = simulated_bank(5, 30, 10, 1.0)
    lira = attack("lira", variant="online")
    stats = lira._stats(bank)
    for j in range(5):
        view, member = lira.pseudo_target_view(stats, bank.masks, bank.ids, bank.pool, bank.population, j)
        assert len(view.refs) == 4 and not any(np.array_equal(view.refs[i], stats[j]) for i in range(4))
        assert np.array_equal(member, bank.masks[j, :30]) and np.array_equal(view.target, stats[j, :30])


def test_rmia_pseudo_targets_take_their_population_from_their_own_non_members() -> None:
    bank, _, _ = simulated_bank(4, 20, 10, 1.0)
    rmia = attack("rmia")
    stats = rmia._stats(bank)
    view, _ = rmia.pseudo_target_view(stats, bank.masks, bank.ids, bank.pool, bank.population, 2)
    assert not bank.masks[2, view.pop_index].any()
    for n, z in enumerate(view.self_in_pop):
        assert z == -1 or view.pop_index[z] == view.index[n]


def test_folds_score_each_pseudo_target_with_the_other_folds_values() -> None:
    bank, _, _ = simulated_bank(4, 30, 10, 1.0)
    rmia = attack("rmia")
    stats = rmia._stats(bank)
    folds = {"even": {"a": 0.0}, "odd": {"a": 1.0}}
    rows = rmia.leave_one_out(stats, bank.masks, bank.ids, bank.pool, bank.population, folds)
    for j, scores, _ in rows:
        used = attack("rmia", a=folds["odd" if j % 2 == 0 else "even"]["a"])
        view, _ = used.pseudo_target_view(stats, bank.masks, bank.ids, bank.pool, bank.population, j)
        assert np.array_equal(scores, used.bank_scores(view))


def test_a_bank_refuses_misaligned_releases_and_too_few_references() -> None:
    bank, _, _ = simulated_bank(3, 10, 4, 1.0)
    with pytest.raises(SegleakError, match=">= 2 references"):
        Bank(bank.ids, bank.references[:1], bank.masks[:1], bank.pool)
    shuffled = [bank.references[0].select(list(reversed(bank.ids)))] + bank.references[1:]
    with pytest.raises(SegleakError, match="bank's order"):
        Bank(bank.ids, shuffled, bank.masks, bank.pool)
    with pytest.raises(SegleakError, match="'elsewhere' is not in"):
        Bank(bank.ids, bank.references, bank.masks, ["elsewhere"])


def test_dense_lira_survives_a_dimension_no_reference_varies_on() -> None:
    rng = np.random.default_rng(5)
    refs = rng.normal(0, 1, (6, 4, 3))
    refs[:, :, 2] = 2.0  # e.g. a class every reference gets entirely right on label-only outputs
    masks = rng.random((6, 4)) < 0.5
    for variant in ("offline", "online"):
        scores = attack("dense_lira", variant=variant).bank_scores(view_of(refs, masks, rng.normal(0, 1, (4, 3))))
        assert np.isfinite(scores).all()
