"""The hybrid drop rule (`refine.drop_loss_above: hybrid`): a class's own loss mixture only where that class shows
two modes, elsewhere only what is confidently another class, never the global cut."""

import numpy as np

from lossguided.data.manifest import ClassMap
from lossguided.losstable import LossTable
from lossguided.refine.apply import drop_decision, select_with_info


def _table(seed: int = 0) -> tuple[LossTable, np.ndarray]:
    """Class 0 (a head class): 600 images, 30% of them look-alikes of class 1 filed under 0 (bimodal losses).
    Class 1 (a rare, hard class): 191 correct images whose losses sit around 1 nat (one mode), as a model unsure of
    a rare class gives them; the other class never reaches its own typical confidence on them."""
    rng = np.random.default_rng(seed)
    n0, n1 = 600, 191
    wrong = np.zeros(n0 + n1, dtype=bool)
    wrong[rng.choice(n0, 180, replace=False)] = True
    labels = np.r_[np.zeros(n0, np.int64), np.ones(n1, np.int64)]
    loss = np.where(wrong, rng.lognormal(np.log(2.5), 0.35, n0 + n1), rng.lognormal(np.log(0.05), 0.6, n0 + n1))
    loss[n0:] = rng.lognormal(np.log(1.0), 0.3, n1)
    p_label = np.exp(-loss)
    other = 1 - labels
    p_other = np.where(wrong, np.minimum(0.9, 1 - p_label), np.minimum(0.3, 1 - p_label) * 0.5)
    top_classes = np.full((n0 + n1, 5), -1, np.int32)
    top_probs = np.zeros((n0 + n1, 5), np.float16)
    first_is_label = p_label >= p_other
    top_classes[:, 0] = np.where(first_is_label, labels, other)
    top_classes[:, 1] = np.where(first_is_label, other, labels)
    top_probs[:, 0] = np.maximum(p_label, p_other)
    top_probs[:, 1] = np.minimum(p_label, p_other)
    table = LossTable(
        ids=np.arange(n0 + n1),
        labels=labels,
        losses=loss.astype(np.float32),
        n_records=np.ones(n0 + n1, np.int32),
        preds=top_classes[:, 0].astype(np.int64),
        paths=[f"x{i}.png" for i in range(n0 + n1)],
        classes=ClassMap(("tshirt", "shirt")),
        true_labels=np.where(wrong, other, labels),
        p_label=p_label.astype(np.float32),
        top_classes=top_classes,
        top_probs=top_probs,
    )
    return table, wrong


def test_hybrid_keeps_a_clean_unimodal_hard_class_that_the_global_cut_guts():
    table, _ = _table()
    hard = table.labels == 1
    auto = drop_decision(table, drop_loss_above="auto")
    hybrid = drop_decision(table, drop_loss_above="hybrid")
    assert np.isfinite(auto.info["drop_threshold_global"])  # the global fit finds two modes ...
    assert (~auto.dropped[hard]).sum() < 0.6 * hard.sum()  # ... and its cut guts the hard, clean class
    assert (~hybrid.dropped[hard]).sum() >= 0.95 * hard.sum()  # the hybrid rule keeps it


def test_hybrid_drops_the_look_alike_wrong_labels_of_a_bimodal_class():
    table, wrong = _table()
    head = table.labels == 0
    hybrid = drop_decision(table, drop_loss_above="hybrid")
    assert hybrid.dropped[head & wrong].mean() >= 0.9
    assert hybrid.dropped[head & ~wrong].mean() <= 0.05
    ids, info = select_with_info(table, bands=["1-1000"], drop_loss_above="hybrid", drop_quantile=None, per_class=None)
    assert len(ids) == int((~hybrid.dropped).sum())
    assert info["classes_fitted_alone"] == 1 and "hybrid" in info["drop_threshold_method"]


def test_a_threshold_below_every_loss_is_one_clear_error():
    table, _ = _table()
    for above in (0.001, -1.0, float("-inf")):
        try:
            select_with_info(table, bands=["1-5"], drop_loss_above=above, drop_quantile=None, per_class=None)
        except ValueError as e:
            assert "the selection is empty" in str(e) and "lowest loss" in str(e)
        else:
            raise AssertionError(f"drop_loss_above={above} selected something")
