"""Stage-2 selection: the vectorised ``select`` against a per-class loop written straight from the rules."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest

from lossguided.refine import Band, parse_band, select, union

# the package's `select` attribute is the function, so fetch the module itself
select_module = importlib.import_module("lossguided.refine.select")

ALL_BANDS = ("1-5", "6-10", "11-15", "median")


def reference(ids, labels, losses, bands=("1-5",), drop_loss_above=9.0, drop_quantile=None, per_class=None):
    """The rules, one class at a time."""
    ids, labels, losses = np.asarray(ids), np.asarray(labels), np.asarray(losses)
    limits = [] if drop_loss_above is None else [float(drop_loss_above)]
    if drop_quantile and len(losses):
        limits.append(float(np.quantile(losses, 1 - drop_quantile)))
    classes: dict[int, list[tuple[float, int]]] = {}
    for i, c, loss in zip(ids.tolist(), labels.tolist(), losses.tolist(), strict=True):
        if all(loss <= limit for limit in limits):
            classes.setdefault(c, []).append((loss, i))
    median_width = per_class or 5
    out = {}
    for band in bands:
        chosen = []
        for rows in classes.values():
            rows.sort()
            n = len(rows)
            if band == "median":
                k, start = median_width, (n - median_width) // 2
            else:
                a, b = (int(x) for x in band.split("-"))
                k, start = b - a + 1, a - 1
                if start > max(0, (n - median_width) // 2):
                    start = (n - k) // 2
            chosen += [i for _, i in (rows if n <= k else rows[start : start + k])]
        out[band] = np.array(sorted(chosen), dtype=ids.dtype)
    return out


def random_case(rng: np.random.Generator) -> dict:
    """Tiny and mid-size classes, losses from a few values (ties, -0.0, negatives), shuffled sparse ids."""
    n_classes = int(rng.integers(0, 8))
    sizes = np.where(rng.random(n_classes) < 0.7, rng.integers(0, 8, n_classes), rng.integers(8, 40, n_classes))
    class_ids = rng.choice(10**6, n_classes, replace=False) - 50
    labels = np.repeat(class_ids, sizes)
    n = labels.size
    values = np.array([0.0, -0.0, 0.25, 0.5, 0.5, 1.0, 2.5, 8.0, 9.0, 9.5, -1.5], dtype=np.float32)
    losses = rng.choice(values[: int(rng.integers(2, values.size + 1))], n)
    ids = rng.choice(10**6, n, replace=False) * 7 - 1000
    perm = rng.permutation(n)
    if rng.random() < 0.2:  # sorted ids take another path
        ids, perm = np.sort(ids), np.arange(n)
    return {
        "ids": ids,
        "labels": labels[perm],
        "losses": losses.astype(rng.choice([np.float32, np.float64])),
        "bands": tuple(rng.choice(["1-5", "6-10", "11-15", "median", "1-1", "2-3", "1-50", "3-9"], 3)),
        "drop_loss_above": [9.0, None, 1.0, -1.0][int(rng.integers(4))],
        "drop_quantile": [None, None, 0.1, 0.35][int(rng.integers(4))],
        "per_class": [None, 1, 3, 5, 7][int(rng.integers(5))],
    }


def assert_same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for band in want:
        np.testing.assert_array_equal(got[band], want[band], err_msg=band)
        assert got[band].dtype == want[band].dtype


@pytest.mark.parametrize("key_bits, table_bits", [(64, 22), (40, 3), (24, 22), (0, 22)])
def test_matches_reference_on_random_cases(monkeypatch, key_bits, table_bits):
    # Narrow keys force the compressed codes (table, rank) and the lexsort fallback.
    monkeypatch.setattr(select_module, "_KEY_BITS", key_bits)
    monkeypatch.setattr(select_module, "_TABLE_BITS", table_bits)
    rng = np.random.default_rng(key_bits * 100 + table_bits)
    for _ in range(150):
        case = random_case(rng)
        arrays = case.pop("ids"), case.pop("labels"), case.pop("losses")
        assert_same(select(*arrays, **case), reference(*arrays, **case))


def test_matches_reference_on_extreme_values():
    ids = np.array([2**63 - 1, -(2**63), 0, 5, -7, 2**40], dtype=np.int64)
    labels = np.array([2**62, -(2**62), 2**62, 2**62, -(2**62), 2**62], dtype=np.int64)
    losses = np.array([1e-300, -1e300, 0.0, 1e-300, 3.0, -0.0])
    for bands in (("1-1", "2-2", "median"), ALL_BANDS):
        assert_same(
            select(ids, labels, losses, bands=bands, per_class=1),
            reference(ids, labels, losses, bands=bands, per_class=1),
        )


@pytest.mark.parametrize("coder", ["_table_code", "_rank_code"])
def test_compressed_codes_keep_order_and_decode(monkeypatch, coder):
    monkeypatch.setattr(select_module, "_TABLE_BITS", 4)
    rng = np.random.default_rng(3)
    raw = np.concatenate([rng.integers(0, 50, 300), rng.integers(2**40, 2**40 + 9, 300), [2**63 + 5, 7]])
    raw = rng.permutation(raw).astype(np.uint64)
    code = getattr(select_module, coder)(raw, 64)
    assert code.bits < 64 and int(code.code.max()) < 2**code.bits
    np.testing.assert_array_equal(code.to_raw(code.code), raw)
    i, j = rng.integers(0, raw.size, (2, 2000))
    np.testing.assert_array_equal(
        np.sign(raw[i].astype(float) - raw[j]), np.sign(code.code[i].astype(float) - code.code[j])
    )


def test_drops_losses_above_the_limit_only():
    ids, labels = np.arange(4), np.zeros(4, dtype=np.int64)
    losses = np.array([9.0, 9.5, 0.1, np.float32(0.1)], dtype=np.float32)
    assert select(ids, labels, losses)["1-5"].tolist() == [0, 2, 3]
    assert select(ids, labels, losses, drop_loss_above=None)["1-5"].tolist() == [0, 1, 2, 3]
    # 0.1 as float32 is slightly above 0.1: compared exactly, not after rounding the limit to float32
    assert select(ids, labels, losses, drop_loss_above=0.1)["1-5"].tolist() == []


def test_drop_quantile_drops_the_top_share_and_combines_with_the_limit():
    ids, labels, losses = np.arange(10), np.zeros(10, dtype=np.int64), np.arange(10, dtype=np.float32)
    kept = select(ids, labels, losses, bands="1-50", drop_loss_above=None, drop_quantile=0.1)["1-50"]
    assert kept.tolist() == list(range(9))  # the 0.9 quantile is 8.1
    kept = select(ids, labels, losses, bands="1-50", drop_loss_above=5.0, drop_quantile=0.1)["1-50"]
    assert kept.tolist() == list(range(6))
    assert select(ids, labels, losses, bands="1-50", drop_loss_above=None, drop_quantile=0.0)["1-50"].size == 10


def test_small_class_keeps_all_whatever_the_band():
    ids = np.arange(13)
    labels = np.array([0] * 3 + [1] * 5 + [2] * 5)
    losses = np.arange(13, dtype=np.float32) / 4
    got = select(ids, labels, losses, bands=ALL_BANDS, per_class=5)
    for band in ALL_BANDS:
        assert got[band].tolist() == list(range(13)), band
    assert select(ids, labels, losses, bands="1-1")["1-1"].tolist() == [0, 3, 8]


def test_ranks_follow_loss_then_id():
    ids = np.array([40, 10, 30, 20, 50, 60, 70])
    losses = np.array([0.5, 0.5, 0.1, 0.5, 0.7, 0.7, 0.9], dtype=np.float32)
    got = select(ids, np.zeros(7, dtype=np.int64), losses, bands=("1-2", "3-4"), per_class=1)
    assert got["1-2"].tolist() == [10, 30]  # 30 (0.1), then the lowest id of the 0.5 tie
    assert got["3-4"].tolist() == [20, 40]


def test_median_starts_at_half_the_surplus():
    ids, labels, losses = np.arange(12), np.zeros(12, dtype=np.int64), np.arange(12, dtype=np.float32) / 4
    assert select(ids, labels, losses, bands="median")["median"].tolist() == [3, 4, 5, 6, 7]
    assert select(ids, labels, losses, bands="median", per_class=3)["median"].tolist() == [4, 5, 6]
    assert select(ids[:11], labels[:11], losses[:11], bands="median")["median"].tolist() == [3, 4, 5, 6, 7]


def test_rank_band_after_the_median_start_becomes_the_median():
    ids, labels, losses = np.arange(20), np.zeros(20, dtype=np.int64), np.arange(20, dtype=np.float32) / 4
    n12 = select(ids[:12], labels[:12], losses[:12], bands=("6-10", "1-5"))
    assert n12["6-10"].tolist() == [3, 4, 5, 6, 7]  # start 5 > median start 3
    assert n12["1-5"].tolist() == [0, 1, 2, 3, 4]
    n20 = select(ids, labels, losses, bands=("6-10", "11-15", "2-3"), per_class=9)
    assert n20["6-10"].tolist() == [5, 6, 7, 8, 9]  # start 5 == median start (20 - 9) // 2
    assert n20["11-15"].tolist() == [7, 8, 9, 10, 11]  # replaced by a median window of its own width 5
    assert n20["2-3"].tolist() == [1, 2]
    # a wide median band: n <= its width makes its start 0, so "1-5" stays and "2-3" moves to the middle
    got = select(ids[:8], labels[:8], losses[:8], bands=("1-5", "2-3"), per_class=10)
    assert got["1-5"].tolist() == [0, 1, 2, 3, 4] and got["2-3"].tolist() == [3, 4]


def test_rank_band_is_cut_at_the_class_end():
    ids, labels, losses = np.arange(22), np.zeros(22, dtype=np.int64), np.arange(22, dtype=np.float32) / 4
    assert select(ids, labels, losses, bands="10-30", per_class=1)["10-30"].tolist() == list(range(9, 22))


def test_union_deduplicates_bands():
    ids, labels, losses = np.arange(7), np.zeros(7, dtype=np.int64), np.arange(7, dtype=np.float32)
    got = select(ids, labels, losses, bands=("1-5", "median"))
    assert got["median"].tolist() == [1, 2, 3, 4, 5]
    assert union(got).tolist() == [0, 1, 2, 3, 4, 5]
    assert union([np.array([3, 1]), np.array([3, 2])]).tolist() == [1, 2, 3]
    assert union({}).size == 0


def test_high_loss_noise_never_reaches_the_lowest_band():
    rng = np.random.default_rng(7)
    sizes = np.maximum(2, (400 * np.exp(-np.arange(60) / 12)).astype(int))  # long tail, down to 2 samples
    labels = np.repeat(np.arange(60), sizes)
    member = np.arange(labels.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    noisy = (rng.random(labels.size) < 0.3) & (member >= 5)  # every class keeps at least 5 clean samples
    losses = np.where(noisy, rng.uniform(3.0, 14.0, labels.size), rng.gamma(1.0, 0.3, labels.size))
    losses = np.round(losses, 2).astype(np.float32)
    shuffle = rng.permutation(labels.size)
    ids, labels, losses, noisy = shuffle * 3 + 11, labels[shuffle], losses[shuffle], noisy[shuffle]
    got = select(ids, labels, losses, bands=ALL_BANDS)
    assert noisy.sum() > 500 and not np.isin(ids[noisy], got["1-5"]).any()
    assert got["1-5"].size == np.minimum(5, sizes).sum()
    assert not np.isin(ids[losses > 9.0], union(got)).any()


def test_keys_dtypes_and_empty_inputs():
    ids = np.array([5, 3], dtype=np.int32)
    got = select(ids, np.array([1, 1]), np.array([0.5, 0.25], dtype=np.float16), bands=[Band("m"), "01-01"])
    assert list(got) == ["m", "01-01"] and got["01-01"].tolist() == [3] and got["01-01"].dtype == np.int32
    empty = select([], [], [], bands=ALL_BANDS)
    assert list(empty) == list(ALL_BANDS) and all(a.size == 0 for a in empty.values())
    assert select([1, 2], [0, 0], [10.0, 11.0])["1-5"].size == 0
    assert select([1], [0], [0.0], bands=()) == {}


def test_parse_band():
    assert parse_band("1-5") == Band("1-5", 1, 5)
    assert parse_band("median").is_median and parse_band("median").width(3) == 3
    assert parse_band("3-3").width() == 1


@pytest.mark.parametrize("text", ["0-5", "5-1", "abc", "", "1-5 ", "Median", "-1-5", "1--5", "1.5-2", 5, None])
def test_bad_band_names_the_value_and_the_forms(text):
    with pytest.raises(ValueError, match=re.escape(repr(text)) + r'.*"a-b" with integers 1 <= a <= b.*"median"'):
        parse_band(text)
    with pytest.raises(ValueError, match="invalid band"):
        select([1], [0], [0.0], bands=["1-5", text])


def test_bad_band_object():
    with pytest.raises(ValueError, match="invalid band"):
        Band("x", 2, 1)


@pytest.mark.parametrize(
    "arrays, message",
    [
        (([1, 2], [0], [0.1, 0.2]), "same length, got 2, 1 and 2"),
        (([1, 2], [0, 0], [0.1]), "same length, got 2, 2 and 1"),
        (([1.0, 2.0], [0, 0], [0.1, 0.2]), "ids must be a 1-D integer array, got shape (2,) and dtype float64"),
        (([[1, 2]], [0, 0], [0.1, 0.2]), "ids must be a 1-D integer array, got shape (1, 2)"),
        (([1, 2], ["a", "b"], [0.1, 0.2]), "labels must be a 1-D integer array"),
        (([1, 2], [0, 0], ["a", "b"]), "losses must be a 1-D real array"),
        (([1, 2], [0, 0], [1 + 1j, 0]), "losses must be a 1-D real array"),
        (([4, 9, 7, 8], [0] * 4, [0.1, np.nan, np.inf, -np.inf]), "found 3 NaN or inf value(s), the first at id 9"),
        (([4, 9], [0, 0], [np.float32(np.inf), 0]), "found 1 NaN or inf value(s), the first at id 4"),
        (([3, 1, 3, 1, 2], [0] * 5, [0.0] * 5), "ids must be unique, found 2 repeated id(s), the smallest 1"),
        (([2**40, 5, 2**40], [0] * 3, [0.0] * 3), f"found 1 repeated id(s), the smallest {2**40}"),
        (([5, 5], [0, 0], [0.0, 0.0]), "found 1 repeated id(s), the smallest 5"),
    ],
)
def test_bad_arrays(arrays, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        select(*arrays)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"drop_quantile": 1.0}, "drop_quantile must be in [0, 1) (the top share by loss to drop) or None, got 1.0"),
        ({"drop_quantile": -0.1}, "drop_quantile must be in [0, 1)"),
        ({"drop_quantile": float("nan")}, "got nan"),
        ({"drop_quantile": "0.1"}, "got '0.1'"),
        ({"drop_loss_above": float("nan")}, "drop_loss_above must be a number (losses above it are dropped) or None"),
        ({"drop_loss_above": "9"}, "got '9'"),
        ({"per_class": 0}, "per_class (width of the median band) must be an integer >= 1 or None, got 0"),
        ({"per_class": 2.5}, "got 2.5"),
        ({"per_class": True}, "got True"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        select([1, 2], [0, 0], [0.1, 0.2], **options)


def test_confidently_another_class_drops_the_look_alike_wrong_labels_and_keeps_hard_correct_ones():
    """Class 0 is a head class the model is sure of (p ~ 0.9); class 1 a rare look-alike whose correct images the
    model rates only ~0.4 (the rest on class 0). Four images labelled 1 are really class 0 (p(0) ~ 0.95)."""
    from lossguided.refine.threshold import confident_other_mask

    rng = np.random.default_rng(0)
    labels = np.array([0] * 200 + [1] * 20 + [1] * 4)
    p0 = np.concatenate([rng.uniform(0.85, 0.95, 200), rng.uniform(0.5, 0.6, 20), rng.uniform(0.93, 0.97, 4)])
    p1 = 1 - p0
    p_label = np.where(labels == 0, p0, p1)
    top_classes = np.stack([np.where(p0 >= p1, 0, 1), np.where(p0 >= p1, 1, 0)], 1)
    top_probs = np.stack([np.maximum(p0, p1), np.minimum(p0, p1)], 1)
    losses = -np.log(p_label)
    drop = confident_other_mask(labels, losses, p_label, top_classes, top_probs, num_classes=2, min_keep=2)
    assert drop[-4:].all()  # the wrong labels: as sure as class 0 is of its own images
    assert not drop[200:220].any()  # the hard, correct rare images: class 0 is less sure of them than of its own
    assert not drop[:200].any()
