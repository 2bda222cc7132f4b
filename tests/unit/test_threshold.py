"""The label-free drop threshold (refine.drop_loss_above: auto) on losses whose two populations are known."""

import numpy as np
import pytest

from lossguided.refine.threshold import estimate_drop_threshold


def two_populations(seed=0, *, noise=0.2, counts=(3000, 1500, 800, 400, 200, 100, 60), tail_shift=0.3):
    """Long-tailed classes; clean log-losses around log(0.05), higher for rarer classes (the tail is harder);
    wrong labels around log(4)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    wrong = rng.random(labels.size) < noise
    clean_mu = np.log(0.05) + tail_shift * labels
    x = np.where(wrong, rng.normal(np.log(4.0), 0.4, labels.size), rng.normal(clean_mu, 1.0))
    return labels, np.exp(x), wrong


def test_threshold_and_noise_rate_land_near_the_truth():
    labels, losses, wrong = two_populations()
    auto = estimate_drop_threshold(labels, losses)
    assert abs(auto.noise_rate - wrong.mean()) < 0.02
    truth = np.bincount(labels, weights=wrong) / np.bincount(labels)
    assert np.abs(auto.noise_rate_per_class - truth).max() < 0.08
    keep = auto.keep_mask(labels, losses)
    assert 1 - wrong[keep].mean() > 0.99  # from 0.80
    assert keep[~wrong].mean() > 0.95  # few correct labels lost
    # the crossing lies between the two modes in every class
    assert np.all((auto.per_class > 0.05) & (auto.per_class < 4.0))


def test_every_class_keeps_something_even_when_its_clean_losses_are_high():
    labels, losses, wrong = two_populations(counts=(4000, 2000, 30, 12), tail_shift=1.2)
    auto = estimate_drop_threshold(labels, losses, min_keep=5)
    kept = np.bincount(labels[auto.keep_mask(labels, losses)], minlength=4)
    assert kept.min() >= 5
    assert not auto.fitted_alone[2:].any()  # too small for their own fit: the global fit or the floor decides


def test_clean_losses_lose_almost_nothing():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), [2000, 1000, 500, 200, 100])
    losses = np.exp(rng.normal(np.log(0.05), 1.0, labels.size))  # one population: no second mode
    auto = estimate_drop_threshold(labels, losses)
    assert auto.noise_rate < 0.01
    assert np.isinf(auto.global_threshold)


def test_summary_is_json_ready_and_errors_name_the_problem():
    import json

    labels, losses, _ = two_populations(counts=(300, 200))
    summary = estimate_drop_threshold(labels, losses).summary()
    json.dumps(summary)
    assert len(summary["drop_threshold_per_class"]) == 2
    with pytest.raises(ValueError, match="finite"):
        estimate_drop_threshold(labels, np.where(labels == 0, np.nan, losses))
    with pytest.raises(ValueError, match="1-D"):
        estimate_drop_threshold(labels.astype(float), losses)


def test_disagreeing_samples_are_dropped_but_no_class_is_emptied():
    from lossguided.refine.threshold import agreeing_mask

    labels = np.array([0] * 6 + [1] * 8)
    losses = np.array([0.1, 0.2, 3.0, 0.3, 2.0, 0.4] + [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 6.0, 7.0])
    preds = np.array([0, 0, 1, 0, 1, 0] + [0] * 8)  # class 1: the model never agrees
    keep = agreeing_mask(labels, losses, preds, min_keep=3)
    assert keep[:6].tolist() == [True, True, False, True, False, True]  # class 0: the two disagreeing go
    kept_1 = np.sort(losses[6:][keep[6:]])
    assert kept_1.tolist() == [0.5, 1.0, 2.0]  # class 1 keeps its three lowest losses
