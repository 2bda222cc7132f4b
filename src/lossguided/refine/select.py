"""Stage 2 of loss-guided data refinement: choose, in every class, the samples whose average loss puts them in the
asked-for rank bands. Stage 1 records each sample's average training loss; samples with a very high loss are mostly
mislabelled, so they are dropped, and the rest of each class is ranked by loss (ties by id) so that a band such as
"1-5" (the five easiest samples) or "median" (the five around the median) yields a clean, class-balanced training list.
It is pure numpy and vectorised: one sort of a packed 64-bit key (class, loss, id) serves every band, so a call costs
less than one ``np.lexsort((losses, labels))`` even at AliProducts scale (2.5 M samples in 50 k classes).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_MEDIAN_WIDTH", "Band", "parse_band", "select", "union"]

DEFAULT_MEDIAN_WIDTH = 5
_BAND_FORMS = '"a-b" with integers 1 <= a <= b (1-based loss ranks, inclusive) or "median"'
_RANGE = re.compile(r"([0-9]+)-([0-9]+)")
_KEY_BITS = 64  # width of the packed sort key; the tests lower it to exercise the fallbacks
_TABLE_BITS = 22  # a code table has at most 2**_TABLE_BITS entries (32 MiB)


@dataclass(frozen=True)
class Band:
    """Loss ranks ``first..last`` (1-based, inclusive) of every class, or the median band when both are None."""

    name: str
    first: int | None = None
    last: int | None = None

    def __post_init__(self) -> None:
        ranks = (self.first, self.last)
        if ranks != (None, None) and not (all(isinstance(r, int) for r in ranks) and 1 <= self.first <= self.last):
            raise ValueError(f"invalid band {self!r}; allowed: {_BAND_FORMS}")

    @property
    def is_median(self) -> bool:
        return self.first is None

    def width(self, median_width: int = DEFAULT_MEDIAN_WIDTH) -> int:
        """How many samples the band takes from a class that has more than that many."""
        return median_width if self.first is None else self.last - self.first + 1


def parse_band(text: str) -> Band:
    """Parse "a-b" (1 <= a <= b) or "median"; ValueError otherwise, since a typo would silently select nothing."""
    if isinstance(text, str):
        if text == "median":
            return Band(text)
        match = _RANGE.fullmatch(text)
        if match and 1 <= int(match[1]) <= int(match[2]):
            return Band(text, int(match[1]), int(match[2]))
    raise ValueError(f"invalid band {text!r}; allowed: {_BAND_FORMS}")


def select(
    ids: np.ndarray,
    labels: np.ndarray,
    losses: np.ndarray,
    *,
    bands: Iterable[str | Band] | str = ("1-5",),
    drop_loss_above: float | None = 9.0,
    drop_quantile: float | None = None,
    per_class: int | None = None,
) -> dict[str, np.ndarray]:
    """Selected ids of each band, sorted ascending, keyed by the band as given (its ``name`` for a Band).

    ids, labels, losses: shape (N,); ids unique integers, labels integers, losses finite average losses.
    Rules: (1) drop samples with loss > ``drop_loss_above`` (None: keep) and, when ``drop_quantile`` = q is given,
    those with loss > the (1 - q) quantile (linear interpolation) of all N losses; a sample above either goes.
    (2) Rank the rest of each class by loss ascending, ties by id ascending. (3) A band of width k ("a-b": b - a + 1;
    "median": ``per_class``, default 5) keeps a class of n <= k samples whole. (4) Otherwise "a-b" takes ranks a..b
    (cut at n), "median" the k ranks from 0-based (n - k) // 2. (5) A rank band whose start a - 1 lies after the
    median band's start max(0, (n - m) // 2), m the median width, is replaced in that class by the median window of
    the rank band's own width: k ranks from (n - k) // 2 (so "6-10" never yields more than 5 samples).
    """
    parsed = _parse_bands(bands)
    median_width = _check_per_class(per_class)
    ids, labels, losses, ids_increasing = _check_arrays(ids, labels, losses)
    keep = _keep_mask(losses, drop_loss_above, drop_quantile)
    if keep is not None:
        ids, labels, losses = ids[keep], labels[keep], losses[keep]
    if ids.size == 0:
        return {name: ids.copy() for name, _ in parsed}
    starts, sizes, ids_at = _sort_rows(ids, labels, losses, ids_increasing)
    out = {}
    for name, band in parsed:
        lo, hi = _band_window(band, sizes, median_width)
        out[name] = np.sort(ids_at(_window_positions(starts, lo, hi)))
    return out


def union(selected: Mapping[str, np.ndarray] | Iterable[np.ndarray]) -> np.ndarray:
    """Sorted unique ids of several bands (``select``'s result or arrays of ids): one deduplicated training list."""
    arrays = list(selected.values()) if isinstance(selected, Mapping) else list(selected)
    if not arrays:
        return np.empty(0, dtype=np.int64)
    ordered = np.sort(np.concatenate([np.asarray(a) for a in arrays]))
    if ordered.size == 0:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


# --- validation ---------------------------------------------------------------------------------------------------


def _parse_bands(bands: Iterable[str | Band] | str) -> list[tuple[str, Band]]:
    if isinstance(bands, str | Band):
        bands = [bands]
    return [(b.name, b) if isinstance(b, Band) else (b, parse_band(b)) for b in bands]


def _check_per_class(per_class: int | None) -> int:
    if per_class is None:
        return DEFAULT_MEDIAN_WIDTH
    if isinstance(per_class, bool) or not isinstance(per_class, int | np.integer) or per_class < 1:
        raise ValueError(f"per_class (width of the median band) must be an integer >= 1 or None, got {per_class!r}")
    return int(per_class)


def _check_arrays(ids, labels, losses) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """As 1-D arrays (losses float32 or float64), checked; also whether ids are already strictly increasing."""
    arrays = {}
    for name, a, kinds in (("ids", ids, "iu"), ("labels", labels, "iu"), ("losses", losses, "fiu")):
        a = np.asarray(a)
        if a.ndim == 1 and a.size == 0:
            a = a.astype(np.float32 if name == "losses" else np.int64)
        if a.ndim != 1 or a.dtype.kind not in kinds:
            kind = "real" if name == "losses" else "integer"
            raise ValueError(f"{name} must be a 1-D {kind} array, got shape {a.shape} and dtype {a.dtype}")
        arrays[name] = a
    ids, labels, losses = arrays["ids"], arrays["labels"], arrays["losses"]
    if not ids.size == labels.size == losses.size:
        raise ValueError(
            f"ids, labels and losses must have the same length, got {ids.size}, {labels.size} and {losses.size}"
        )
    if losses.dtype != np.float32 and losses.dtype != np.float64:
        losses = losses.astype(np.float32 if losses.dtype == np.float16 else np.float64)
    finite = np.isfinite(losses)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"losses must be finite, found {bad.size} NaN or inf value(s), the first at id {ids[bad[0]]} "
            f"(losses[{bad[0]}] = {losses[bad[0]]})"
        )
    increasing = ids.size < 2 or bool(np.all(ids[1:] > ids[:-1]))
    if not increasing:
        _check_unique(ids)
    return ids, labels, losses, increasing


def _check_unique(ids: np.ndarray) -> None:
    offsets, _ = _offsets(ids)
    span = int(offsets.max())
    if span < max(8 * ids.size, 1 << 16):  # a flag per possible id is cheaper than a sort
        seen = np.zeros(span + 1, dtype=bool)
        seen[offsets.astype(np.intp)] = True
        if np.count_nonzero(seen) == ids.size:
            return
    ordered = np.sort(ids)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if repeated.size:
        raise ValueError(f"ids must be unique, found {repeated.size} repeated id(s), the smallest {repeated[0]}")


def _keep_mask(losses: np.ndarray, above: float | None, quantile: float | None) -> np.ndarray | None:
    """Rule 1: which samples stay, or None when all do."""
    if above is not None and not (_is_real(above) and above == above):
        raise ValueError(f"drop_loss_above must be a number (losses above it are dropped) or None, got {above!r}")
    if quantile is not None and not (_is_real(quantile) and 0 <= quantile < 1):
        raise ValueError(f"drop_quantile must be in [0, 1) (the top share by loss to drop) or None, got {quantile!r}")
    thresholds = [] if above is None else [float(above)]
    if quantile and losses.size:
        thresholds.append(float(np.quantile(losses, 1.0 - quantile)))
    if not thresholds:
        return None
    keep = _at_most(losses, min(thresholds))
    return None if keep.all() else keep


def _is_real(x: object) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def _at_most(losses: np.ndarray, threshold: float) -> np.ndarray:
    """losses <= threshold, exact as in float64 without converting float32 losses."""
    if losses.dtype == np.float32:
        with np.errstate(over="ignore"):
            t32 = np.float32(threshold)
        if float(t32) > threshold:  # float(): a Python float would be compared as float32
            t32 = np.nextafter(t32, np.float32(-np.inf))
        threshold = t32
    return losses <= threshold


# --- sorting ------------------------------------------------------------------------------------------------------


@dataclass
class _Code:
    """Order-preserving injective integer code (uint64) of raw uint64 values, with its width in bits."""

    raw: np.ndarray
    code: np.ndarray
    bits: int
    to_raw: Callable[[np.ndarray], np.ndarray] = lambda c: c


def _offsets(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a - a.min() as uint64 (exact even for int64 spans over 2**63) and the minimum as a uint64 scalar array."""
    base = np.asarray(a.min()).astype(np.uint64)
    return a.astype(np.uint64) - base, base


def _plain(raw: np.ndarray) -> _Code:
    return _Code(raw, raw, int(raw.max()).bit_length())


def _table_code(raw: np.ndarray, room: int) -> _Code | None:
    """Dense rank of the top bits (a table of at most 2**_TABLE_BITS entries), low bits kept: O(N), no sort.

    None when the kept low bits alone would not fit in ``room`` bits.
    """
    table_bits = min(_TABLE_BITS, max(16, (4 * raw.size).bit_length()))  # no table much larger than the data
    shift = max(0, int(raw.max()).bit_length() - table_bits)
    if shift >= room:
        return None
    low = np.uint64((1 << shift) - 1)
    top = (raw >> np.uint64(shift)).astype(np.intp)
    present = np.bincount(top) > 0
    rank = np.cumsum(present, dtype=np.uint64) - np.uint64(1)
    tops = np.flatnonzero(present).astype(np.uint64)
    code = (rank[top] << np.uint64(shift)) | (raw & low)
    bits = (tops.size - 1).bit_length() + shift

    def to_raw(c: np.ndarray) -> np.ndarray:
        return (tops[(c >> np.uint64(shift)).astype(np.intp)] << np.uint64(shift)) | (c & low)

    return _Code(raw, code, bits, to_raw)


def _rank_code(raw: np.ndarray, room: int) -> _Code:
    """Dense rank among the distinct values, from one argsort (np.unique hashes and searchsorted misses cache)."""
    order = np.argsort(raw)
    ordered = raw[order]
    first = np.empty(raw.size, dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    code = np.empty(raw.size, dtype=np.uint64)
    code[order] = np.cumsum(first, dtype=np.uint64) - np.uint64(1)
    distinct = ordered[first]
    return _Code(raw, code, (distinct.size - 1).bit_length(), lambda c: distinct[c.astype(np.intp)])


def _loss_bits(losses: np.ndarray) -> np.ndarray:
    """Unsigned integers in the order of the float losses (IEEE bits, negatives flipped); -0.0 and 0.0 alike."""
    f = losses + losses.dtype.type(0)  # turns -0.0 into 0.0
    if f.dtype == np.float64:
        with np.errstate(over="ignore"):
            narrow = f.astype(np.float32)
        if np.array_equal(narrow, f):  # float32 values held as float64: half the bits, same order
            f = narrow
    u = f.view(np.uint32 if f.dtype == np.float32 else np.uint64)
    if f.min() < 0:
        sign = u.dtype.type(1 << (8 * u.itemsize - 1))
        u = np.where(u & sign, ~u, u | sign)
    return u.astype(np.uint64)


def _sort_rows(
    ids: np.ndarray, labels: np.ndarray, losses: np.ndarray, ids_increasing: bool
) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Sort rows by (label, loss, id) with one packed-key sort.

    Returns class starts and sizes in sorted order, shape (C,), and a function from sorted positions to ids.
    The fields are plain offsets when they fit 64 bits together; otherwise they are compressed (table, then rank
    codes: loss first, as float bits are wide) and, if even that fails, ``np.lexsort`` orders the rows.
    """
    if ids_increasing:  # the row number orders ties like the id and is narrower
        id_field = _plain(np.arange(ids.size, dtype=np.uint64))

        def to_ids(raw: np.ndarray) -> np.ndarray:
            return ids[raw.astype(np.intp)]
    else:
        id_raw, id_base = _offsets(ids)
        id_field = _plain(id_raw)

        def to_ids(raw: np.ndarray) -> np.ndarray:
            return (raw + id_base).astype(ids.dtype)

    fields = [_plain(_offsets(labels)[0]), _plain(_offsets(_loss_bits(losses))[0]), id_field]
    for coder in (_table_code, _rank_code):
        for j in (1, 0, 2):
            room = _KEY_BITS - sum(f.bits for i, f in enumerate(fields) if i != j)
            if fields[j].bits > room:
                smaller = coder(fields[j].raw, room)
                if smaller is not None and smaller.bits < fields[j].bits:
                    fields[j] = smaller
    label_f, loss_f, id_f = fields
    if sum(f.bits for f in fields) <= _KEY_BITS:
        key = id_f.code.copy()
        if loss_f.bits:
            key |= loss_f.code << np.uint64(id_f.bits)
        if label_f.bits:
            key |= label_f.code << np.uint64(id_f.bits + loss_f.bits)
        key.sort()
        classes = key >> np.uint64(id_f.bits + loss_f.bits) if label_f.bits else None
        id_mask = np.uint64((1 << id_f.bits) - 1)

        def ids_at(pos: np.ndarray) -> np.ndarray:
            return to_ids(id_f.to_raw(key[pos] & id_mask))
    else:
        order = np.lexsort((id_f.raw, loss_f.raw, label_f.raw))
        classes = label_f.raw[order]

        def ids_at(pos: np.ndarray) -> np.ndarray:
            return to_ids(id_f.raw[order[pos]])

    if classes is None:
        starts = np.zeros(1, dtype=np.intp)
    else:
        starts = np.concatenate(([0], np.flatnonzero(classes[1:] != classes[:-1]) + 1))
    sizes = np.diff(np.append(starts, ids.size))
    return starts, sizes, ids_at


# --- bands --------------------------------------------------------------------------------------------------------


def _band_window(band: Band, n: np.ndarray, median_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rules 3-5: per class [lo, hi) of 0-based ranks; n: remaining samples per class, shape (C,)."""
    k = band.width(median_width)
    if band.is_median:
        lo = (n - k) // 2
    else:
        median_start = np.maximum((n - median_width) // 2, 0)
        lo = np.where(band.first - 1 > median_start, (n - k) // 2, band.first - 1)
    small = n <= k
    return np.where(small, 0, lo), np.where(small, n, np.minimum(lo + k, n))


def _window_positions(starts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Sorted positions starts[c] + lo[c] .. starts[c] + hi[c] - 1 of every class c, concatenated."""
    sizes = hi - lo
    before = np.cumsum(sizes) - sizes
    return np.repeat(starts + lo - before, sizes) + np.arange(int(sizes.sum()))
