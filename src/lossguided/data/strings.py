"""A column of strings held as one contiguous UTF-8 byte buffer and int64 offsets, in place of a NumPy object array.

At 2.55M samples an object array of paths costs ~180 MB of Python `str` objects per process, and every `paths[i]`
in a DataLoader worker touches an object's reference count, which copies its memory page into that worker: each
worker ends an epoch with a private copy. Here item `i` is `prefix + buffer[offsets[i]:offsets[i + 1]]`, decoded on
access; the buffer and offsets are plain arrays that a forked worker only reads, so their pages stay shared. A column
behaves like the sequence of strings it holds: `len`, `col[i]` (a `str`), `col[index]` and `col[mask]` (a column),
iteration, `==` with another column or a list, and `np.asarray(col)` (an object array, for small uses).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

GATHER_BYTES = 8 << 20  # bytes of gather index built at once when selecting rows


class StringColumn:
    """`prefix` is prepended to every item (e.g. a CSV's folder), so that it is stored once."""

    __slots__ = ("buffer", "offsets", "prefix")

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray, prefix: str = "") -> None:
        self.buffer = np.asarray(buffer, dtype=np.uint8)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.prefix = prefix
        if self.offsets.ndim != 1 or len(self.offsets) == 0:
            raise ValueError("offsets must be a 1-D array of N + 1 positions")
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.buffer):
            raise ValueError(f"offsets must run from 0 to the buffer's length {len(self.buffer)}")

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_strings(cls, items: Iterable[str], prefix: str = "") -> StringColumn:
        """From any iterable of strings (an object array, a list); NUL inside an item is refused (it cannot be a
        path or a label, and it separates items while the buffer is built)."""
        items = [str(s) for s in items]
        if not items:
            return cls(np.zeros(0, np.uint8), np.zeros(1, np.int64), prefix)
        joined = "\0".join(items).encode("utf-8", errors="surrogateescape")
        buffer = np.frombuffer(joined, dtype=np.uint8)
        cuts = np.flatnonzero(buffer == 0)
        if len(cuts) != len(items) - 1:
            bad = next(i for i, s in enumerate(items) if "\0" in s)
            raise ValueError(f"item {bad} contains a NUL byte")
        keep = np.ones(len(buffer), dtype=bool)
        keep[cuts] = False
        starts = np.concatenate([[0], cuts + 1])
        offsets = np.concatenate([starts - np.arange(len(items)), [len(buffer) - len(cuts)]])
        return cls(buffer[keep], offsets, prefix)

    @classmethod
    def of(cls, values: StringColumn | Sequence[str] | np.ndarray) -> StringColumn:
        """`values` as a column (returned as is when it already is one)."""
        return values if isinstance(values, StringColumn) else cls.from_strings(values)

    @classmethod
    def concat(cls, columns: Sequence[StringColumn]) -> StringColumn:
        """Columns one after the other (their prefixes must agree)."""
        if not columns:
            return cls.from_strings([])
        prefixes = {c.prefix for c in columns}
        if len(prefixes) > 1:
            columns = [c.with_prefix_applied() for c in columns]
        shifts = np.cumsum([0] + [len(c.buffer) for c in columns[:-1]])
        offsets = np.concatenate([[0]] + [c.offsets[1:] + s for c, s in zip(columns, shifts, strict=True)])
        return cls(np.concatenate([c.buffer for c in columns]), offsets, columns[0].prefix)

    def with_prefix_applied(self) -> StringColumn:
        """The same strings with the prefix written into every item (prefix '')."""
        if not self.prefix:
            return self
        return StringColumn.from_strings(list(self))

    # -- sequence behaviour -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes + self.offsets.nbytes

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            n = len(self)
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"index {key} out of range for {n} strings")
            raw = self.buffer[self.offsets[i] : self.offsets[i + 1]].tobytes()
            return self.prefix + raw.decode("utf-8", errors="surrogateescape")
        if isinstance(key, slice):
            key = np.arange(len(self))[key]
        return self.take(np.asarray(key))

    def take(self, index: np.ndarray) -> StringColumn:
        """Rows `index` (positions, or a boolean mask of length N) as a new column; vectorized, in bounded memory."""
        index = np.asarray(index)
        if index.dtype == bool:
            if len(index) != len(self):
                raise IndexError(f"boolean index of length {len(index)} for {len(self)} strings")
            index = np.flatnonzero(index)
        index = index.astype(np.int64, copy=False)
        index = np.where(index < 0, index + len(self), index)
        out, offsets = gather(self.buffer, self.offsets[index], self.offsets[index + 1])
        return StringColumn(out, offsets, self.prefix)

    def __iter__(self) -> Iterator[str]:
        buf, off, prefix = self.buffer, self.offsets, self.prefix
        for i in range(len(self)):
            yield prefix + buf[off[i] : off[i + 1]].tobytes().decode("utf-8", errors="surrogateescape")

    def tolist(self) -> list[str]:
        return list(self)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(len(self), dtype=object)
        out[:] = self.tolist()
        return out if dtype is None else out.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self).astype(dtype)

    def __eq__(self, other) -> bool:
        if isinstance(other, StringColumn) and other.prefix == self.prefix:
            return np.array_equal(self.offsets, other.offsets) and np.array_equal(self.buffer, other.buffer)
        try:
            return len(self) == len(other) and all(a == str(b) for a, b in zip(self, other, strict=True))
        except TypeError:
            return NotImplemented

    __hash__ = None  # mutable arrays inside

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self.take(np.arange(min(3, len(self)))))
        return f"StringColumn([{head}{', ...' if len(self) > 3 else ''}], n={len(self)}, nbytes={self.nbytes})"

    def startswith_any(self, prefixes: tuple[str, ...]) -> np.ndarray:
        """bool [N]: whether each item (prefix included) starts with one of `prefixes`; vectorized."""
        out = np.zeros(len(self), dtype=bool)
        lengths = np.diff(self.offsets)
        for p in prefixes:
            if self.prefix:
                if self.prefix.startswith(p):
                    out[:] = True
                    continue
                if not p.startswith(self.prefix):
                    continue
                p = p[len(self.prefix) :]
            raw = np.frombuffer(p.encode(), dtype=np.uint8)
            if len(raw) == 0:
                out[:] = True
                continue
            cand = np.flatnonzero(lengths >= len(raw))
            starts = self.offsets[cand]
            match = np.ones(len(cand), dtype=bool)
            for j, byte in enumerate(raw):
                match &= self.buffer[starts + j] == byte
            out[cand[match]] = True
        return out

    def contains(self, text: str) -> np.ndarray:
        """bool [N]: whether each item holds `text` (within the prefix or within the item's own bytes); vectorized,
        scanning the buffer a block at a time."""
        out = np.zeros(len(self), dtype=bool)
        if text in self.prefix:
            out[:] = True
            return out
        raw = np.frombuffer(text.encode(), dtype=np.uint8)
        buf = self.buffer
        if len(raw) == 0 or len(buf) < len(raw):
            out[:] = len(raw) == 0
            return out
        last = len(buf) - len(raw) + 1  # candidate starts
        for a in range(0, last, GATHER_BYTES):
            cand = np.flatnonzero(buf[a : min(last, a + GATHER_BYTES)] == raw[0]) + a
            for j in range(1, len(raw)):
                cand = cand[buf[cand + j] == raw[j]]
            rows = np.searchsorted(self.offsets, cand, side="right") - 1
            out[rows[cand + len(raw) <= self.offsets[rows + 1]]] = True
        return out


def gather(
    buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray, *, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Byte ranges [starts[i], ends[i]) of `buffer` concatenated: (bytes uint8 [M], offsets int64 [N + 1]).
    Vectorized in chunks whose int64 gather index stays within GATHER_BYTES. `out=buffer` compacts in place, which
    is safe when the ranges are ascending and disjoint (each range then moves down or stays); the result is then a
    view of the buffer's first M bytes."""
    starts = np.asarray(starts)
    lengths = np.asarray(ends) - starts
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.uint8) if out is None else out[: int(offsets[-1])]
    row, n = 0, len(lengths)
    while row < n:
        stop = int(np.searchsorted(offsets, offsets[row] + GATHER_BYTES // 8, side="right")) - 1
        stop = min(max(stop, row + 1), n)
        a, b = offsets[row], offsets[stop]
        src = np.repeat(starts[row:stop] - offsets[row:stop], lengths[row:stop])
        src += np.arange(a, b)
        out[a:b] = buffer[src]
        row = stop
    return out, offsets


_HASH_BASE = np.uint64(0x100000001B3)  # FNV's 64-bit prime, as the base of a polynomial hash mod 2^64
_HASH_INVERSE = np.uint64(pow(0x100000001B3, -1, 2**64))


@functools.lru_cache(maxsize=2)
def _hash_powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(B^k, B^-k) mod 2^64 for k < size, uint64 (read-only: shared between calls)."""
    one = np.ones(1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        powers = np.concatenate([one, np.cumprod(np.full(size - 1, _HASH_BASE, dtype=np.uint64))])
        inverse = np.concatenate([one, np.cumprod(np.full(size - 1, _HASH_INVERSE, dtype=np.uint64))])
    powers.flags.writeable = inverse.flags.writeable = False
    return powers, inverse


def range_hashes(buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A 64-bit polynomial hash of each byte range [starts[i], ends[i]) of `buffer` (uint64 [N]), vectorized in
    chunks: sum_j (byte_j + 1) * B^j mod 2^64, mixed with the length. Equal ranges hash equal; for distinct ones a
    collision has a probability near 2^-64 a pair. Within a chunk every byte is weighted by B^(its position in the
    chunk), one running sum gives each range's weighted sum, and B^-(range start) (B is odd, so invertible mod 2^64)
    brings it back to the range's own positions."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(ends, dtype=np.int64) - starts
    n = len(lengths)
    out = np.zeros(n, dtype=np.uint64)
    if n == 0:
        return out
    step = GATHER_BYTES // 8
    powers, inverse = _hash_powers(max(step, int(lengths.max(initial=0))) + 1)
    with np.errstate(over="ignore"):
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        row = 0
        while row < n:
            stop = int(np.searchsorted(offsets, offsets[row] + step, side="right")) - 1
            stop = min(max(stop, row + 1), n)
            a, b = offsets[row], offsets[stop]
            src = np.repeat(starts[row:stop] - offsets[row:stop], lengths[row:stop])
            src += np.arange(a, b)
            terms = buffer[src].astype(np.uint64)
            terms += np.uint64(1)
            terms *= powers[: b - a]
            sums = np.zeros(b - a + 1, dtype=np.uint64)
            np.cumsum(terms, out=sums[1:])
            first = offsets[row:stop] - a
            out[row:stop] = (sums[offsets[row + 1 : stop + 1] - a] - sums[first]) * inverse[first]
            row = stop
        out ^= lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return out
