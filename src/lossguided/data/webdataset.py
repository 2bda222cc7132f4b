"""WebDataset-style tar shards as an image source: `--train/--val/--test` accept a folder of `.tar` shards, one
shard, or a brace pattern (`shards/train-{000000..000009}.tar`) that a user already has, and
`lossguided preprocess --format webdataset` writes them from any manifest (`data.webdataset_writer`). No
`webdataset` package is needed.

A shard is a plain POSIX tar whose members are grouped into samples by key (the member name up to the first dot of
its file name): `<key>.jpg|jpeg|png|webp` is the image, and the label is `<key>.cls` (a class index when a
`classes.json` list of class names lies beside the shards, else the label's name as text) or, without one,
`<key>.json` (a dict with `label`). Fine-tuning on a selected subset and shuffling need random access, not a
sequential pass: each shard's offsets index (sample key -> byte offset and size of its image, and the label) is built
once with `tarfile` and cached beside the shard as `.<shard>.idx.npz` (under the cache folder when the shard's folder
is read-only), keyed by the shard's size and modification time; a sample is then one `pread`.

Ids: the keys, when every key is an integer (what the writer writes: the manifest's ids); otherwise the sample's
position over the shards in the given order. A sample's path (for people, loss tables, suspects) is `<shard>#<key>`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from lossguided.cache import cache_root
from lossguided.data.decode import UnreadableImageError, decode_bytes, resize_uint8, to_rgb
from lossguided.data.manifest import ClassMap, DataError, Manifest
from lossguided.data.storage import Storage
from lossguided.io import write_npz

log = logging.getLogger("lossguided")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CLASSES_FILE = "classes.json"
INDEX_VERSION = 2  # 2: a key twice in a shard is an error (a cached index of such a shard is rebuilt)
_BRACE = re.compile(r"\{([^{}]*)\}")
NAME_MARKER = ".tar#"  # in a sample's name `<shard>.tar#<key>`
_MEMBER = re.compile(r"^((?:.*/)?[^./]+)\.([^/]+)$")  # WebDataset's split: key = up to the file name's first dot


# -- naming shards ----------------------------------------------------------------------------------------------
def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> a-000.tar, a-001.tar, a-002.tar (zero padding kept); `{x,y}` lists; several braces."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi, width = int(r.group(1)), int(r.group(2)), len(r.group(1))
        if hi < lo:
            raise DataError(f"{pattern}: empty range {{{body}}}")
        items = [f"{i:0{width}d}" for i in range(lo, hi + 1)]
    else:
        items = body.split(",")
    return [x for item in items for x in expand_braces(head + item + tail)]


def is_shard_spec(spec: str | os.PathLike | None) -> bool:
    """A `.tar` file, a brace pattern of them, or a folder holding `.tar` files and no sub-folders (an ImageFolder
    root has class folders, a `lossguided preprocess` folder a manifest.json)."""
    if spec is None:
        return False
    text = str(spec)
    if text.endswith(".tar"):
        return True
    path = Path(text)
    if not path.is_dir() or (path / "manifest.json").is_file():
        return False
    with os.scandir(path) as it:
        entries = [(e.name, e.is_dir()) for e in it if not e.name.startswith(".")]
    return any(n.endswith(".tar") for n, _ in entries) and not any(d for _, d in entries)


def shard_paths(spec: str | os.PathLike) -> list[Path]:
    """The shards that `spec` names, in order; a missing one is an error naming it."""
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        shards = sorted(path / e.name for e in os.scandir(path) if e.name.endswith(".tar") and e.is_file())
        if not shards:
            raise DataError(f"{text}: no .tar shards in this folder")
        return shards
    shards = [Path(p) for p in expand_braces(text)]
    for p in shards:
        if not p.is_file():
            raise DataError(f"{p}: shard not found (from {text})")
    return shards


# -- the offsets index ------------------------------------------------------------------------------------------
def _index_paths(shard: Path) -> list[Path]:
    """Where a shard's index is cached: beside it, else under the cache folder; none when caching is off."""
    root = cache_root()
    if root is None:
        return []
    digest = hashlib.sha1(str(shard.resolve()).encode()).hexdigest()[:20]
    return [shard.parent / f".{shard.name}.idx.npz", root / "wds-index" / f"{digest}.npz"]


def _stamp(shard: Path) -> np.ndarray:
    st = shard.stat()
    return np.array([INDEX_VERSION, st.st_size, st.st_mtime_ns], dtype=np.int64)


def _join(items: list[str]) -> np.ndarray:
    return np.frombuffer("\0".join(items).encode("utf-8", "surrogateescape"), dtype=np.uint8)


def _split(buf: np.ndarray, n: int) -> list[str]:
    return buf.tobytes().decode("utf-8", "surrogateescape").split("\0") if n else []


MAX_LABEL_BYTES = 1 << 16  # a .cls or .json member larger than this is not a label


def build_index(shard: Path) -> dict[str, np.ndarray]:
    """Read `shard` once with `tarfile`: per sample, its key, the image's byte offset and size, and the label as
    text (from `.cls`, else `.json`'s `label`; its `true_label` when present). A sample without an image or a label
    is an error naming the shard and key."""
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for m in tar:
                match = _MEMBER.match(m.name) if m.isfile() else None
                if match is None:
                    continue
                key, ext = match.group(1), match.group(2).lower()
                s = samples.setdefault(key, {})
                part = "image" if ext in IMAGE_EXTS else ext if ext in ("cls", "json") else None
                if part is None:
                    continue
                if part in s:  # a second 3.png (or 3.cls) would silently replace the first sample
                    raise DataError(f"{shard}: {m.name}: key {key!r} appears twice; every sample needs its own key")
                if part == "image":
                    s["image"] = (m.offset_data, m.size)
                else:
                    if m.size > MAX_LABEL_BYTES:
                        raise DataError(f"{shard}: {m.name}: {m.size:,} bytes, too long for a label")
                    s[ext] = tar.extractfile(m).read().decode("utf-8", "replace")
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"{shard}: not a readable tar shard ({e})") from None
    keys, offsets, sizes, labels, true = [], [], [], [], []
    for key, s in samples.items():
        if "image" not in s:
            raise DataError(f"{shard}: {key}: no image member (.{', .'.join(IMAGE_EXTS)})")
        meta = {}
        if "json" in s:
            try:
                meta = json.loads(s["json"])
            except ValueError as e:
                raise DataError(f"{shard}: {key}.json: not JSON ({e})") from None
            meta = meta if isinstance(meta, dict) else {}
        label = s["cls"].strip() if "cls" in s else meta.get("label")
        if label is None or str(label) == "":
            raise DataError(f"{shard}: {key}: no label (a .cls member, or .json with 'label')")
        keys.append(key)
        offsets.append(s["image"][0])
        sizes.append(s["image"][1])
        labels.append(str(label))
        true.append(str(meta.get("true_label", "")))
    if not keys:
        raise DataError(f"{shard}: no samples (members <key>.jpg|png|webp with <key>.cls or <key>.json)")
    return {
        "keys": _join(keys),
        "offset": np.array(offsets, np.int64),
        "size": np.array(sizes, np.int64),
        "labels": _join(labels),
        "true": _join(true),
        "stamp": _stamp(shard),
    }


def shard_index(shard: Path) -> dict[str, np.ndarray]:
    """The offsets index of `shard`: read from its cache when the shard's size and mtime match, else built and
    cached (beside the shard, or under the cache folder when that cannot be written)."""
    stamp = _stamp(shard)
    places = _index_paths(shard)
    for place in places:
        try:
            with np.load(place, allow_pickle=False) as z:
                if np.array_equal(z["stamp"], stamp):
                    return {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError):
            continue
    index = build_index(shard)
    for place in places:
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            write_npz(place, **index)
            break
        except (OSError, DataError) as e:
            log.debug("could not cache the index of %s in %s (%s)", shard, place, e)
    return index


# -- reading ----------------------------------------------------------------------------------------------------
class ShardStore:
    """Every sample of a shard spec: shard number, image offset and size, key, label text. Files are opened lazily
    per process (also after a fork)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.shards = shard_paths(spec)
        parts = [shard_index(s) for s in self.shards]
        counts = [len(p["offset"]) for p in parts]
        self.shard = np.repeat(np.arange(len(parts), dtype=np.int32), counts)
        self.offset = np.concatenate([p["offset"] for p in parts])
        self.size = np.concatenate([p["size"] for p in parts])
        self.keys = [k for p, n in zip(parts, counts, strict=True) for k in _split(p["keys"], n)]
        self.labels = [x for p, n in zip(parts, counts, strict=True) for x in _split(p["labels"], n)]
        self.true = [x for p, n in zip(parts, counts, strict=True) for x in _split(p["true"], n)]
        self.ids = _ids_of(self.keys)
        self._order = np.argsort(self.ids, kind="stable")
        self._fds: dict[int, int] = {}
        self._by_key: dict[str, int] | None = None

    def name(self, pos: int) -> str:
        return f"{self.shards[int(self.shard[pos])]}#{self.keys[pos]}"

    def positions_of(self, ids: np.ndarray, *, source: str) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        pos = self._order[np.searchsorted(self.ids, ids, sorter=self._order).clip(0, max(0, len(self.ids) - 1))]
        bad = self.ids[pos] != ids
        if bad.any():
            raise DataError(
                f"{source}: {int(bad.sum())} ids are not in the shards {self.spec}, e.g. {ids[bad][:5].tolist()}"
            )
        return pos

    def position_of_key(self, key: str) -> int | None:
        if self._by_key is None:
            self._by_key = {k: i for i, k in enumerate(self.keys)}
        return self._by_key.get(key)

    def read(self, pos: int) -> bytes:
        k = int(self.shard[pos])
        fd = self._fds.get(k)
        if fd is None:
            fd = self._fds[k] = os.open(self.shards[k], os.O_RDONLY)
        data = os.pread(fd, int(self.size[pos]), int(self.offset[pos]))
        if len(data) != int(self.size[pos]):
            raise DataError(f"{self.name(pos)}: shard shorter than its index; the shard changed or is damaged")
        return data

    def __getstate__(self) -> dict:  # worker processes open their own files
        return self.__dict__ | {"_fds": {}}

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


def _ids_of(keys: list[str]) -> np.ndarray:
    """The keys' integers when every key's file name is one and they are distinct, else positions."""
    try:
        ids = np.array([int(k.rsplit("/", 1)[-1]) for k in keys], dtype=np.int64)
    except (ValueError, OverflowError):
        return np.arange(len(keys), dtype=np.int64)
    return ids if len(np.unique(ids)) == len(ids) else np.arange(len(keys), dtype=np.int64)


_STORES: dict[str, tuple[tuple, ShardStore]] = {}


def open_store(spec: str) -> ShardStore:
    """The store of `spec`, cached per process while its shards are unchanged (a manifest and its subsets share
    one index)."""
    stamps = tuple((str(p), tuple(_stamp(p))) for p in shard_paths(spec))
    cached = _STORES.get(spec)
    if cached is None or cached[0] != stamps:
        cached = _STORES[spec] = (stamps, ShardStore(spec))
    return cached[1]


def _class_names(shards: list[Path]) -> tuple[str, ...] | None:
    path = shards[0].parent / CLASSES_FILE
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: expected a JSON list of class names")
    return tuple(str(x) for x in names)


def _label_names(store: ShardStore, names: tuple[str, ...] | None, labels: list[str]) -> list[str]:
    """Labels as class names: a `.cls` index through `classes.json` when there is one."""
    if names is None:
        return labels
    out = []
    for pos, text in enumerate(labels):
        if text in names and not text.isdigit():
            out.append(text)
            continue
        if not text.lstrip("-").isdigit() or not 0 <= int(text) < len(names):
            raise DataError(
                f"{store.name(pos)}: label {text!r} is not a class index 0..{len(names) - 1} of "
                f"{store.shards[0].parent / CLASSES_FILE}"
            )
        out.append(names[int(text)])
    return out


def read_webdataset(spec: str, *, classes: ClassMap | None = None) -> Manifest:
    """The manifest of WebDataset shards (see the module doc); labels re-encoded through `classes` when given. Its
    storage's root is the spec, which points the datasets at the shards."""
    spec = str(spec)
    store = open_store(spec)
    names = _class_names(store.shards)
    labels = _label_names(store, names, store.labels)
    own = ClassMap(names) if names is not None else ClassMap.from_names(labels)
    uniq, codes = np.unique(np.array(labels, dtype=str), return_inverse=True)
    encoded = own.encode_codes(uniq.tolist(), codes.ravel(), source=spec)
    true = None
    if all(store.true):
        true_names = _label_names(store, names, store.true)
        if set(true_names) <= set(own.names):
            true = own.index_of(true_names)
    manifest = Manifest(
        ids=store.ids,
        labels=encoded,
        classes=own,
        source=spec,
        storage=Storage.webdataset([store.name(i) for i in range(len(store.ids))], spec),
        true_labels=true,
    )
    return manifest if classes is None else manifest.with_classes(classes)


def resolve_names(manifest: Manifest) -> Manifest:
    """A CSV manifest whose paths read `<shard>.tar#<key>` (what `lossguided select` writes for shard samples) as a
    WebDataset manifest: ids and labels as the CSV has them, pixels read from the shards by each shard's offsets
    index. Every name is checked now; one that no shard holds is an error naming the CSV, row and name."""
    named = manifest.paths.contains(NAME_MARKER)
    rows = manifest.rows if manifest.rows is not None else np.arange(len(manifest)) + 2
    if not named.all():
        r = int(np.flatnonzero(~named)[0])
        raise DataError(
            f"{manifest.source}: row {rows[r]}: path {manifest.paths[r]!r}: mixes WebDataset samples "
            "(<shard>.tar#<key>) and image files; one CSV names one kind"
        )
    locate_names(manifest.paths, source=manifest.source, rows=rows)
    return Manifest(
        ids=manifest.ids,
        labels=manifest.labels,
        classes=manifest.classes,
        source=manifest.source,
        storage=Storage.webdataset(manifest.paths),
        true_labels=manifest.true_labels,
        rows=manifest.rows,
        digest=manifest.digest,
    )


def locate(manifest: Manifest) -> tuple[list[ShardStore], np.ndarray, np.ndarray]:
    """Where each row's image is: (stores, store of each row [N] int, position in that store [N] int). By id in the
    spec's index when the rows came from one spec (the storage's root); else by name, one index per shard."""
    spec = manifest.storage.root
    if spec is None:
        return locate_names(manifest.paths, source=manifest.source, rows=manifest.rows)
    store = open_store(spec)
    pos = store.positions_of(manifest.ids, source=manifest.source)
    return [store], np.zeros(len(pos), dtype=np.int64), pos


def locate_names(
    names: Sequence[str], *, source: str, rows: np.ndarray | None = None
) -> tuple[list[ShardStore], np.ndarray, np.ndarray]:
    """`locate` by names `<shard>.tar#<key>`: each shard's (cached) index is opened once, and each key looked up in
    it; a name that no shard holds is an error naming `source`, the row and the name."""
    stores: list[ShardStore] = []
    by_shard: dict[str, int] = {}
    which, pos = np.zeros(len(names), dtype=np.int64), np.zeros(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        shard, _, key = str(name).rpartition("#")
        k = by_shard.get(shard)
        if k is None:
            if not shard.endswith(".tar") or not os.path.isfile(shard):
                row = rows[i] if rows is not None else i
                raise DataError(f"{source}: row {row}: {name}: no such image, and {shard or name} is no .tar shard")
            k = by_shard[shard] = len(stores)
            stores.append(open_store(shard))
        p = stores[k].position_of_key(key)
        if p is None:
            row = rows[i] if rows is not None else i
            raise DataError(f"{source}: row {row}: {name}: shard {shard} holds no sample with key {key!r}")
        which[i], pos[i] = k, p
    return stores, which, pos


class WebDatasetDataset(Dataset):
    """`(uint8 [C,S,S], label, id)` for the samples (and labels) of `manifest`, read from its shards by offset."""

    def __init__(self, manifest: Manifest, *, image_size: int) -> None:
        self.stores, self.which, self.pos = locate(manifest)
        self.ids, self.labels, self.image_size = manifest.ids, manifest.labels, image_size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        store, pos = self.stores[int(self.which[i])], int(self.pos[i])
        try:
            x = decode_bytes(store.read(pos))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise UnreadableImageError(
                f"{store.name(pos)}: id {int(self.ids[i])}: cannot decode image ({type(e).__name__}: {e})"
            ) from None
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = resize_uint8(x, self.image_size)
        return x, int(self.labels[i]), int(self.ids[i])


def image_of(manifest: Manifest, sample_id: int) -> np.ndarray:
    """One sample's image at its stored size, uint8 [H,W,3] (for thumbnails)."""
    stores, which, pos = locate(manifest.subset(manifest.positions_of(np.array([sample_id], dtype=np.int64))))
    with Image.open(io.BytesIO(stores[int(which[0])].read(int(pos[0])))) as img:
        return np.array(to_rgb(img))


def bytes_by_name(name: str) -> bytes | None:
    """The encoded image a sample's path `<shard>.tar#<key>` names (in a loss table or selection CSV); None when
    `name` is no such path or the shard no longer holds the key."""
    shard, sep, key = str(name).rpartition("#")
    if not sep or not shard.endswith(".tar") or not os.path.isfile(shard):
        return None
    try:
        store = open_store(shard)
        pos = store.position_of_key(key)
        return None if pos is None else store.read(pos)
    except (DataError, OSError):
        return None


def image_by_name(name: str) -> np.ndarray | None:
    """`bytes_by_name` decoded, uint8 [H,W,3]; None also when the bytes do not decode."""
    data = bytes_by_name(name)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.array(to_rgb(img))
    except (OSError, ValueError, TypeError, Image.DecompressionBombError):
        return None
