"""Columnar reading of a `path,label[,id]` CSV manifest, cached by the CSV's content hash.

At 2.55M rows a CSV must not become 2.55M Python dicts. A file without quote characters (what tools write for plain
paths and SKU codes) is split with NumPy on the raw bytes: newlines and commas are found in bulk, the path column
becomes one byte buffer with offsets (`StringColumn`), labels are dictionary-encoded with one `np.unique` over
fixed-width byte strings, ids are parsed in bulk. Any other file (quotes, ragged rows, very long labels) goes through
the `csv` module in chunks of rows into the same columns. Both paths report every problem as one line naming the file
and the row as a spreadsheet shows it (header = row 1; blank lines are skipped and not counted, like `csv.DictReader`).

The parsed columns are written to a cache folder keyed by the CSV's SHA-256 (`<cache>/manifests/<digest>/`, plain
`.npy` files read memory-mapped), so a second load, a resume or another rank on the same machine only hashes the file.
A changed CSV has another digest: it is parsed again. `LOSSGUIDED_CACHE` names the cache root (`off` disables it);
the default is `$XDG_CACHE_HOME/lossguided` or `~/.cache/lossguided`. Small CSVs (under `CACHE_MIN_BYTES`) are not
cached unless a cache folder is given explicitly.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lossguided.cache import cache_root
from lossguided.data.strings import StringColumn, gather

CACHE_VERSION = 1
CACHE_MIN_BYTES = 1 << 20
SCAN_BYTES = 16 << 20  # bytes compared at once when searching the raw file
CHUNK_ROWS = 1 << 16  # rows per chunk on the csv-module path and when building fixed-width labels
MAX_FAST_LABEL = 64  # longer labels or ids take the csv-module path
BOM = b"\xef\xbb\xbf"
COLUMNS = ("path", "label")


class CsvError(ValueError):
    """A problem with the CSV; the message already names the file and row (the caller turns it into a DataError)."""


@dataclass
class CsvColumns:
    """The CSV's columns as written (paths stripped, not resolved). `label_codes` [N] index `label_names`."""

    paths: StringColumn
    label_codes: np.ndarray
    label_names: list[str]
    ids: np.ndarray | None
    digest: str
    cache: Path | None = None  # the cache folder holding these columns, where there is one

    def __len__(self) -> int:
        return len(self.label_codes)


# -- entry point ------------------------------------------------------------------------------------------------
def read_columns(path: Path, *, cache_dir: str | os.PathLike | None = None) -> CsvColumns:
    """The parsed columns of `path`, from the cache when it holds this content, else parsed (and cached)."""
    digest, size = _sha256(path)
    cache = _cache_folder(digest, size, cache_dir)
    if cache is not None:
        cached = _load_cache(cache, digest)
        if cached is not None:
            cached.cache = cache
            return cached
    data = np.fromfile(path, dtype=np.uint8)
    if len(data) >= 3 and data[:3].tobytes() == BOM:  # Excel's "CSV UTF-8" starts with a byte order mark
        data = data[3:]
    _check_bytes(path, data)
    if not _find(data, ord('"'), first=True).size:
        cols = _parse_fast(path, data, digest)
    else:
        cols = None
    if cols is None:
        del data
        cols = _parse_csv_module(path, digest)
    if cache is not None and _save_cache(cache, cols):
        cols.cache = cache
    return cols


def _sha256(path: Path) -> tuple[str, int]:
    """(hex digest, size) of the file, read in blocks (a cache hit never holds the whole file)."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(SCAN_BYTES):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


# -- checks on the raw bytes --------------------------------------------------------------------------------------
def _find(data: np.ndarray, byte: int, *, first: bool = False) -> np.ndarray:
    """Positions of `byte` in `data` [int64], scanning SCAN_BYTES at a time (no full-size boolean temporary)."""
    dtype = np.int32 if len(data) < 2**31 - 1 else np.int64  # positions: half the memory for files under 2 GB
    out = []
    for start in range(0, len(data), SCAN_BYTES):
        hits = np.flatnonzero(data[start : start + SCAN_BYTES] == byte)
        if len(hits):
            out.append((hits + start).astype(dtype))
            if first:
                break
    return np.concatenate(out) if out else np.zeros(0, dtype=dtype)


def _line_of(data: np.ndarray, pos: int) -> int:
    """1-based line number of byte `pos`."""
    return int(np.count_nonzero(data[:pos] == 10)) + 1


def _check_bytes(path: Path, data: np.ndarray) -> None:
    """NUL bytes and text that is not UTF-8 are refused with the line and byte offset."""
    nul = _find(data, 0, first=True)
    if len(nul):
        raise CsvError(
            f"{path}: row {_line_of(data, int(nul[0]))}: NUL byte at byte {int(nul[0])}; "
            "a manifest is text (path,label[,id])"
        )
    for start in range(0, len(data), SCAN_BYTES):
        block = data[start : start + SCAN_BYTES]
        if not (block >= 0x80).any():
            continue
        back = 0  # a multi-byte character may straddle the block's end: include up to 3 more bytes
        stop = min(start + SCAN_BYTES, len(data))
        while stop < len(data) and back < 3 and data[stop] & 0xC0 == 0x80:
            stop, back = stop + 1, back + 1
        try:
            data[start:stop].tobytes().decode("utf-8")
        except UnicodeDecodeError as e:
            pos = start + e.start
            raise CsvError(
                f"{path}: row {_line_of(data, pos)}: not UTF-8 text (byte {pos}: "
                f"0x{int(data[pos]):02x}); save the CSV as UTF-8 (Excel: 'CSV UTF-8')"
            ) from None


# -- the NumPy path ----------------------------------------------------------------------------------------------
def _parse_fast(path: Path, data: np.ndarray, digest: str) -> CsvColumns | None:
    """Split a quote-free CSV in bulk; None when the file needs the csv module (ragged rows, long labels)."""
    nl = _find(data, 10)
    tail = len(data) and (not len(nl) or nl[-1] != len(data) - 1)  # a last line without a newline
    ends = np.concatenate([nl, np.array([len(data)], nl.dtype)]) if tail else nl
    starts = np.concatenate([np.zeros(1, ends.dtype), ends[:-1] + 1])
    ends = ends - ((ends > starts) & (data[np.maximum(ends - 1, 0)] == 13))  # CRLF
    keep = ends > starts  # blank lines are skipped, like csv.DictReader
    starts, ends = starts[keep], ends[keep]
    if not len(starts):
        raise CsvError(f"{path}: row 1: missing column(s) {list(COLUMNS)}; the header must have path,label[,id]")
    header = canonical_header(data[starts[0] : ends[0]].tobytes().decode("utf-8").split(","))
    _check_header(path, header)
    starts, ends = starts[1:], ends[1:]
    n, k = len(starts), len(header)
    if n == 0:
        return _empty(digest, "id" in header)
    commas = _find(data, ord(","))[k - 1 :]  # the header's commas first
    if len(commas) != n * (k - 1):
        return None  # ragged rows: the csv module gives DictReader's exact meaning
    commas = commas.reshape(n, k - 1)  # row i's commas, if each row has k - 1 of them:
    if k > 1 and not ((commas[:, 0] >= starts) & (commas[:, -1] < ends)).all():
        return None
    rows = np.arange(2, n + 2)

    bounds = (starts, ends, commas)
    del starts, ends, commas
    field = functools.partial(_field, data, header, bounds)

    # labels and ids first (small results), then the paths, compacted in place over the file's bytes
    l_start, l_end = field("label")
    _check_not_empty(path, rows, l_end - l_start, "label")
    if (l_end - l_start).max() > MAX_FAST_LABEL:
        return None
    names, codes = _dictionary(data, l_start, l_end)
    del l_start, l_end
    ids = None
    if "id" in header:
        i_start, i_end = field("id")
        if (i_end - i_start).max(initial=0) > MAX_FAST_LABEL:
            return None
        ids = _parse_ids(path, _fixed_width(data, i_start, i_end), rows)
        del i_start, i_end
    p_start, p_end = field("path")
    del bounds, field
    _check_not_empty(path, rows, p_end - p_start, "path")
    buffer, offsets = gather(data, p_start, p_end, out=data)  # every path moves down or stays: safe in place
    return CsvColumns(StringColumn(buffer, offsets), codes, names, ids, digest)


def _field(
    data: np.ndarray, header: list[str], bounds: tuple[np.ndarray, ...], name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of field `name` on every row, stripped: (start [N], end [N]). `bounds`: (line starts [N], line ends [N],
    comma positions [N, k - 1])."""
    starts, ends, commas = bounds
    j, k = header.index(name), len(header)
    start = starts.copy() if j == 0 else commas[:, j - 1] + 1
    end = ends.copy() if j == k - 1 else commas[:, j].copy()
    return _strip(data, start, end)


def _strip(data: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Field bounds without leading/trailing spaces and tabs (`str.strip` for the usual whitespace)."""
    for move, edge in ((1, start), (-1, end)):
        while True:
            live = end > start
            at = edge + (0 if move == 1 else -1)
            ws = live & np.isin(data[np.clip(at, 0, len(data) - 1)], (32, 9))
            if not ws.any():
                break
            edge[ws] += move
    return start, end


def _check_not_empty(path: Path, rows: np.ndarray, lengths: np.ndarray, what: str) -> None:
    empty = np.flatnonzero(lengths <= 0)
    if len(empty):
        raise CsvError(f"{path}: row {rows[empty[0]]}: empty {what}")


def _fixed_width(data: np.ndarray, start: np.ndarray, end: np.ndarray, *, multiple: int = 1) -> np.ndarray:
    """Fields as a fixed-width bytes array `S<w>` [N] (w = longest field, rounded up to `multiple`, NUL-padded),
    built in chunks of rows."""
    width = max(int((end - start).max(initial=0)), 1)
    width = -(-width // multiple) * multiple
    out = np.zeros((len(start), width), dtype=np.uint8)
    cols = np.arange(width)
    for a in range(0, len(start), CHUNK_ROWS):
        s, e = start[a : a + CHUNK_ROWS, None], end[a : a + CHUNK_ROWS, None]
        idx = s + cols
        mask = idx < e
        out[a : a + CHUNK_ROWS][mask] = data[idx[mask]]
    return out.view(f"S{width}").ravel()


def _dictionary(data: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(unique label names in byte order, code [N] int32 of each row). The labels, NUL-padded to a multiple of 8
    bytes, are read as big-endian uint64 words: their order is the bytes' order, and integer sorts are fast."""
    fixed = _fixed_width(data, start, end, multiple=8)
    n, width = len(fixed), fixed.dtype.itemsize
    words = fixed.view(">u8").reshape(n, width // 8).astype(np.uint64)
    order = np.lexsort(words.T[::-1])
    sorted_words = words[order]
    new = np.ones(n, dtype=bool)
    new[1:] = (sorted_words[1:] != sorted_words[:-1]).any(axis=1)
    codes = np.empty(n, dtype=np.int32)
    codes[order] = np.cumsum(new, dtype=np.int32) - 1
    uniq = fixed[order[new]]
    return [u.decode("utf-8") for u in uniq.tolist()], codes


def _parse_ids(path: Path, raw: np.ndarray, rows: np.ndarray) -> np.ndarray:
    try:
        return raw.astype(np.int64)
    except (ValueError, OverflowError):
        pass
    for i, text in enumerate(raw.tolist()):  # only on error: name the first bad row
        _int_id(path, text.decode("utf-8"), rows[i])
    raise CsvError(f"{path}: ids are not all integers")  # not reached


def _int_id(path: Path, text: str, row: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CsvError(f"{path}: row {row}: id {text!r} is not an integer") from None
    if not -(2**63) <= value < 2**63:
        raise CsvError(f"{path}: row {row}: id {text} does not fit in 64 bits (ids must be in [-2^63, 2^63))")
    return value


ALIASES = {  # other tools' names for the two columns (case and spaces ignored)
    "path": ("file", "filepath", "file_path", "filename", "image", "image_path", "img"),
    "label": ("class", "category", "sku", "target", "class_name"),
}


def canonical_header(header: list[str]) -> list[str]:
    """The header with an alias renamed to `path` or `label` where the column itself is missing and exactly one
    alias is there (`file,class` reads as `path,label`); everything else unchanged."""
    out = list(header)
    stripped = [h.strip().lower() for h in header]
    for column, aliases in ALIASES.items():
        if column in out:
            continue
        found = [i for i, h in enumerate(stripped) if h in aliases]
        if len(found) == 1:
            out[found[0]] = column
    return out


def _check_header(path: Path, header: list[str]) -> None:
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise CsvError(
            f"{path}: row 1: missing column(s) {missing}; the header must have path,label[,id] (or an alias: "
            "file/filepath/image for path, class/category/sku for label)"
        )


def _empty(digest: str, has_id: bool) -> CsvColumns:
    return CsvColumns(
        StringColumn.from_strings([]), np.zeros(0, np.int32), [], np.zeros(0, np.int64) if has_id else None, digest
    )


# -- the csv-module path -----------------------------------------------------------------------------------------
def _parse_csv_module(path: Path, digest: str) -> CsvColumns:
    """Quotes, ragged rows and long fields: the csv module, CHUNK_ROWS rows at a time, into the same columns."""
    paths, codes, ids = [], [], []
    names: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = canonical_header(next(reader, []))
        except csv.Error as e:
            raise CsvError(f"{path}: row 1: {e}") from None
        _check_header(path, header)
        ip, il = header.index("path"), header.index("label")
        iid = header.index("id") if "id" in header else None
        row = 1
        while True:
            chunk: list[list[str]] = []
            try:
                for rec in reader:
                    if rec:  # blank lines are skipped, like csv.DictReader
                        chunk.append(rec)
                        if len(chunk) == CHUNK_ROWS:
                            break
            except csv.Error as e:  # e.g. "field larger than field limit (131072)"
                raise CsvError(f"{path}: row {row + len(chunk) + 1}: {e}") from None
            if not chunk:
                break
            rows = np.arange(row + 1, row + 1 + len(chunk))
            p = [r[ip].strip() if ip < len(r) else "" for r in chunk]
            lab = [r[il].strip() if il < len(r) else "" for r in chunk]
            for what, values in (("path", p), ("label", lab)):
                bad = next((i for i, s in enumerate(values) if "\n" in s or "\r" in s), None)
                if bad is not None:
                    raise CsvError(
                        f"{path}: row {rows[bad]}: the {what} spans a line break (a quote left open merges rows); "
                        "close the quote or remove the line break"
                    )
            _check_not_empty(path, rows, np.array([len(s) for s in p]), "path")
            _check_not_empty(path, rows, np.array([len(s) for s in lab]), "label")
            paths.append(StringColumn.from_strings(p))
            codes.append(np.array([names.setdefault(s, len(names)) for s in lab], dtype=np.int32))
            if iid is not None:
                ids.append(
                    np.array(
                        [
                            _int_id(path, r[iid].strip() if iid < len(r) else "", rw)
                            for r, rw in zip(chunk, rows, strict=True)
                        ],
                        dtype=np.int64,
                    )
                )
            row += len(chunk)
    if not codes:
        return _empty(digest, iid is not None)
    # sort the names so that both paths give the same codes
    order = sorted(names, key=names.__getitem__)
    sorted_names = sorted(order)
    remap = np.empty(len(order), dtype=np.int32)
    remap[[names[s] for s in sorted_names]] = np.arange(len(sorted_names), dtype=np.int32)
    return CsvColumns(
        StringColumn.concat(paths),
        remap[np.concatenate(codes)],
        sorted_names,
        np.concatenate(ids) if iid is not None else None,
        digest,
    )


# -- the cache -------------------------------------------------------------------------------------------------------
def _cache_folder(digest: str, size: int, cache_dir: str | os.PathLike | None) -> Path | None:
    root = cache_root(cache_dir)
    if root is None or (cache_dir is None and size < CACHE_MIN_BYTES):
        return None
    return root / "manifests" / digest


def _load_cache(folder: Path, digest: str) -> CsvColumns | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("digest") != digest:
            return None
        load = lambda name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)  # noqa: E731
        paths = StringColumn(load("path_buffer"), load("path_offsets"))
        ids = load("ids") if meta["has_id"] else None
        return CsvColumns(paths, load("label_codes"), list(meta["label_names"]), ids, digest)
    except (OSError, ValueError, KeyError):
        return None  # absent, partial or from another version: parse again


def _save_cache(folder: Path, cols: CsvColumns) -> bool:
    """Write to a temporary folder, then rename: a reader never sees a partial cache; a failure to write only costs
    the next load a parse."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        np.save(tmp / "path_buffer.npy", cols.paths.buffer)
        np.save(tmp / "path_offsets.npy", cols.paths.offsets)
        np.save(tmp / "label_codes.npy", cols.label_codes)
        if cols.ids is not None:
            np.save(tmp / "ids.npy", cols.ids)
        meta = {
            "version": CACHE_VERSION,
            "digest": cols.digest,
            "rows": len(cols),
            "has_id": cols.ids is not None,
            "label_names": cols.label_names,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process cached it first
            _remove_tree(tmp)
        return True
    except OSError:
        return False


def _remove_tree(folder: Path) -> None:
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()


def mark_checked(folder: Path | None, key: str) -> None:
    """Record in the cache that the check named `key` passed for this CSV's content."""
    if folder is None or not folder.is_dir():
        return
    try:
        (folder / f"checked-{hashlib.sha256(key.encode()).hexdigest()[:24]}").touch()
    except OSError:
        return


def was_checked(folder: Path | None, key: str) -> bool:
    return folder is not None and (folder / f"checked-{hashlib.sha256(key.encode()).hexdigest()[:24]}").is_file()
