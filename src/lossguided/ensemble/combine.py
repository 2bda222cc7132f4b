"""Streaming top-k of an ensemble of linear heads over stored features, without ever holding N x K logits.

The ensemble score of row r and class c is ``sum_m (F_m[r] @ W_m[c] / n_views_m + b_m[c])``: each model contributes
the mean of its views' logits, so a model extracted with more test-time views does not outweigh the others (the
top-1 is the same as with raw summed-view logits whenever all models use the same number of views). Rows are streamed
in chunks and classes in tiles, so memory is O(chunk x tile). Every path ends the same way: classes that cannot be in
the top-k are excluded by a rigorous floating-point error bound, and the few remaining candidates are rescored
canonically (products of the stored values are exact in float64, then summed in a fixed pairwise tree), so the result
does not depend on chunk sizes, BLAS blocking, thread count or device, ties go to the lower class index, and the fast
path (bfloat16 scan) returns exactly the same indices and scores as the exact path (float32 scan).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = ["HeadFeatures", "ScanChoice", "choose_scan", "ensemble_topk", "logit_memory_bytes"]

U32 = 2.0**-24  # unit roundoff of float32
U64 = 2.0**-53  # unit roundoff of float64
# relative error of a float32 -> bfloat16 output conversion: 2^-8 when rounding to nearest; 2^-7 covers truncation too
BF16_OUT = 2.0**-7 / (1.0 - 2.0**-7)
# the bounds are computed from float32 row norms (relative error < 1e-3 for D < 8192); 10% more covers that amply
SAFETY = 1.1
TINY = 2.0**-100  # absolute slack for flushed subnormals
PAIR_BYTES = 16 << 20  # float64 scratch per step of the canonical rescoring
FALLBACK_ELEMS = 16 << 20  # float32 scores held at once for rows whose candidates overflow the scan's top-C


class HeadFeatures(NamedTuple):
    """One model's inputs: features [N, D] (float16/float32, numpy or torch), weight [K, D], bias [K], n_views."""

    features: Any
    weight: Any
    bias: Any
    n_views: int


@dataclass
class _Model:
    features: Any  # [N, D], read chunk by chunk
    weight: torch.Tensor  # [K, D] float32 on the compute device
    bias: torch.Tensor  # [K] float32
    n_views: int
    wmax: float  # max_c ||W[c]||
    bmax: float  # max_c |b[c]|
    dwmax: float | None = None  # max_c ||W[c] - bf16(W[c])||, measured by the fast path's first chunk

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])


def _gamma(n: int, u: float) -> float:
    """Higham's gamma_n: bound on the relative error of any n-term float summation order with unit roundoff u."""
    return n * u / (1.0 - n * u)


def _tensor(x: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    arr = np.asarray(x)
    if not arr.flags.writeable:  # torch warns on read-only buffers; the copy is what .to() would do anyway
        arr = np.array(arr)
    return torch.from_numpy(arr).to(device=device, dtype=dtype)


def _rows(features: Any, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Rows [start, stop) of stored features as float32 [R, D] on device (float16 -> float32 is exact)."""
    if isinstance(features, torch.Tensor):
        block = features[start:stop]
    else:
        block = torch.from_numpy(np.array(features[start:stop]))  # one copy out of the memmap, still float16
    return block.to(device=device, dtype=torch.float32)


def _prepare(sets: Sequence[Any], device: torch.device) -> list[_Model]:
    models: list[_Model] = []
    for i, item in enumerate(sets):
        if all(hasattr(item, a) for a in ("features", "weight", "bias", "n_views")):
            hf = HeadFeatures(item.features, item.weight, item.bias, item.n_views)
        elif isinstance(item, tuple | list) and len(item) == 4:
            hf = HeadFeatures(*item)
        else:
            raise ValueError(f"sets[{i}]: expected a FeatureSet or (features, weight, bias, n_views), got {type(item)}")
        n_views = int(hf.n_views)
        if n_views < 1:
            raise ValueError(f"sets[{i}]: n_views={n_views} must be >= 1")
        feats_shape = tuple(hf.features.shape)
        weight = _tensor(hf.weight, device, torch.float32)
        bias = _tensor(hf.bias, device, torch.float32)
        if len(feats_shape) != 2 or weight.ndim != 2 or feats_shape[1] != weight.shape[1]:
            raise ValueError(f"sets[{i}]: features {feats_shape} do not match head weight {tuple(weight.shape)}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"sets[{i}]: bias {tuple(bias.shape)} does not match weight {tuple(weight.shape)}")
        norms = torch.linalg.vector_norm(weight, dim=1)  # finite iff the row is (and its norm does not overflow)
        if not bool(torch.isfinite(norms).all()):
            bad = int(torch.nonzero(~torch.isfinite(norms))[0])
            raise ValueError(f"sets[{i}]: weight row {bad} is not finite (or its norm overflows)")
        if not bool(torch.isfinite(bias).all()):
            raise ValueError(f"sets[{i}]: bias holds non-finite values")
        models.append(_Model(hf.features, weight, bias, n_views, float(norms.max()), float(bias.abs().max())))
    return models


@contextmanager
def _ieee_matmul(device: torch.device) -> Iterator[None]:
    """Force IEEE float32 matmuls (no TF32 / bf16 shortcuts, which "medium"/"high" precision allow on CPUs too) and
    float32 reductions inside bf16 GEMMs, as the error bounds assume; the settings are restored afterwards."""
    per_backend = [
        matmul
        for matmul in (getattr(torch.backends, "mkldnn", None), torch.backends.cuda)
        if hasattr(getattr(matmul, "matmul", None), "fp32_precision")
    ]
    saved = [(b.matmul, b.matmul.fp32_precision) for b in per_backend]
    legacy = None if per_backend else torch.get_float32_matmul_precision()
    cuda_matmul = torch.backends.cuda.matmul
    saved_bf16 = cuda_matmul.allow_bf16_reduced_precision_reduction
    try:
        for matmul, _ in saved:
            matmul.fp32_precision = "ieee"
        if legacy is not None:
            torch.set_float32_matmul_precision("highest")
        if device.type == "cuda":
            cuda_matmul.allow_bf16_reduced_precision_reduction = False
        yield
    finally:
        for matmul, value in saved:
            matmul.fp32_precision = value
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy)
        cuda_matmul.allow_bf16_reduced_precision_reduction = saved_bf16


@functools.cache
def _bf16_gemm_sound(device: str) -> bool:
    """Sanity check that bf16 matmul on this device accumulates in float32 and rounds once (the fast path's bound
    assumes it): on sums of 8192 positive terms, bf16 accumulation, or bf16 partial sums between blocks, would be off
    by more than one rounding to nearest. A check, not a proof; a device that fails it gets the exact path."""
    gen = torch.Generator().manual_seed(0)
    a = (torch.rand(8, 8192, generator=gen) + 1).to(torch.bfloat16)
    b = (torch.rand(8192, 16, generator=gen) + 1).to(torch.bfloat16)
    got = torch.mm(a.to(device), b.to(device)).double().cpu()
    exact = a.double() @ b.double()
    rel = float(((got - exact).abs() / exact).max())
    return rel <= 2.0**-8 + 2 * _gamma(8192, U32)


class ScanChoice(NamedTuple):
    """Which screening scan `ensemble_topk(fast="auto")` takes on a device, and why."""

    bf16: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_MIN_SPEEDUP = 1.5  # the bf16 scan adds a bound check and a fallback: it must beat fp32 GEMMs clearly


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _gemm_seconds(
    device: torch.device, dtype: torch.dtype, *, rows: int = 512, dim: int = 1024, cols: int = 2048
) -> float:
    """Best of 3 timed [rows, dim] x [dim, cols] GEMMs (after one warm-up), the shape of a scan's tile."""
    import time

    gen = torch.Generator().manual_seed(0)
    a = torch.rand(rows, dim, generator=gen).to(device=device, dtype=dtype)
    b = torch.rand(dim, cols, generator=gen).to(device=device, dtype=dtype)
    best = float("inf")
    for i in range(4):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def _choose_scan(device: str) -> ScanChoice:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            return ScanChoice(False, f"{device}: no native bf16 matmul")
    elif dev.type == "cpu":
        flags = _cpu_flags() & set(BF16_CPU_FLAGS)
        if not flags:
            return ScanChoice(False, f"CPU without {' or '.join(BF16_CPU_FLAGS)} (bf16 matmul would be emulated)")
    else:
        return ScanChoice(False, f"{device}: bf16 speed unknown on this device type")
    with _ieee_matmul(dev):
        fp32, bf16 = _gemm_seconds(dev, torch.float32), _gemm_seconds(dev, torch.bfloat16)
    speedup = fp32 / bf16
    if speedup < BF16_MIN_SPEEDUP:
        return ScanChoice(False, f"{device}: bf16 GEMM measured {speedup:.2f}x fp32 (< {BF16_MIN_SPEEDUP}x)")
    if not _bf16_gemm_sound(device):
        return ScanChoice(False, f"{device}: bf16 matmul does not accumulate in float32")
    return ScanChoice(True, f"{device}: native bf16, GEMM measured {speedup:.2f}x fp32")


def choose_scan(device: str | torch.device | None = None) -> ScanChoice:
    """The screening scan `fast="auto"` takes on `device` (default CPU): bf16 only where bf16 matmul is native (CPU
    flags avx512_bf16/amx_bf16; CUDA bf16 support) and a GEMM of a tile's shape measured at least
    BF16_MIN_SPEEDUP times faster than fp32; measured once per device and process. Both scans give the same result."""
    return _choose_scan(str(torch.device(device) if device is not None else torch.device("cpu")))


class _TileTops:
    """The top values of every class tile of a chunk, and the largest value left out of them.

    Keeping `n_keep` classes per tile rather than per row lets a row hold many candidates when they are spread over
    tiles; the left-out maximum proves (or disproves) that nothing left out can reach the top-k.
    """

    def __init__(self, n_keep: int) -> None:
        self.n_keep = n_keep
        self.vals: list[torch.Tensor] = []
        self.idx: list[torch.Tensor] = []
        self.left_out: torch.Tensor | None = None

    def add(self, scores: torch.Tensor, offset: int) -> None:
        """Take one tile of scores [R, w] whose first column is class `offset`."""
        if scores.shape[1] <= self.n_keep:
            vals, idx = scores.clone(), torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
        else:
            vals, idx = scores.topk(self.n_keep, dim=1, sorted=False)
            floor = vals.min(dim=1).values  # every class not kept in this tile scores <= its kept minimum
            self.left_out = floor if self.left_out is None else torch.maximum(self.left_out, floor)
        self.vals.append(vals)
        self.idx.append(idx + offset)

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Kept values [R, S] float64, their classes [R, S], and the largest left-out value [R] float64 (-inf if
        none was left out)."""
        vals = torch.cat(self.vals, 1).double()
        if self.left_out is None:
            left = torch.full((vals.shape[0],), -math.inf, dtype=torch.float64, device=vals.device)
        else:
            left = self.left_out.double()
        return vals, torch.cat(self.idx, 1), left


def _scan_fp32(models: list[_Model], xs: list[torch.Tensor], bias: torch.Tensor, tops: _TileTops, tile: int) -> None:
    """float32 ensemble scores of a chunk, one class tile at a time, into `tops`; memory R x tile."""
    n_rows, n_classes = xs[0].shape[0], bias.shape[0]
    buf = torch.empty(n_rows, min(tile, n_classes), device=bias.device)
    for t0 in range(0, n_classes, tile):
        t1 = min(n_classes, t0 + tile)
        acc = buf if t1 - t0 == buf.shape[1] else torch.empty(n_rows, t1 - t0, device=bias.device)
        acc.copy_(bias[t0:t1].expand(n_rows, -1))
        for model, x in zip(models, xs, strict=True):
            acc.addmm_(x, model.weight[t0:t1].t(), alpha=1.0 / model.n_views)
        tops.add(acc, t0)


@dataclass
class _Bf16Layout:
    """Column layout of the concatenated bf16 operands: [x_0/n_0 | x_1/n_1 | ... | 1 | 1 | 0-pad] against
    [W_0 | W_1 | ... | bias_hi | bias_lo | 0-pad], so one GEMM yields the whole ensemble score with one rounding."""

    offsets: list[int]
    width: int  # sum of D_m
    padded: int
    bias_hi: torch.Tensor
    bias_lo: torch.Tensor

    @classmethod
    def build(cls, models: list[_Model], bias: torch.Tensor) -> _Bf16Layout:
        offsets = np.cumsum([0] + [m.dim for m in models]).tolist()
        width = int(offsets[-1])
        hi = bias.to(torch.bfloat16)
        lo = (bias - hi.to(torch.float32)).to(torch.bfloat16)  # bias - hi is exact in float32
        return cls(offsets[:-1], width, -(-(width + 2) // 32) * 32, hi, lo)


def _scan_bf16(
    models: list[_Model],
    xs: list[torch.Tensor],
    norms: list[torch.Tensor],
    bias: torch.Tensor,
    layout: _Bf16Layout,
    tops: _TileTops,
    tile: int,
) -> torch.Tensor:
    """bf16 ensemble scores of a chunk (xs[m] [R, D_m], norms[m] = ||xs[m]|| [R] float64), one class tile at a
    time, into `tops`. Returns E0 [R] float64: |bf16 score - real score| <= E0 + BF16_OUT * |bf16 score|."""
    n_rows, n_classes, device = xs[0].shape[0], bias.shape[0], bias.device
    xcat = torch.zeros(n_rows, layout.padded, dtype=torch.bfloat16, device=device)
    for model, x, off in zip(models, xs, layout.offsets, strict=True):
        xcat[:, off : off + model.dim].copy_(x / model.n_views if model.n_views != 1 else x)
    xcat[:, layout.width : layout.width + 2] = 1

    measure = any(model.dwmax is None for model in models)  # first chunk: measure ||W - bf16(W)|| on the way
    dwmax = [0.0] * len(models)
    wbuf = torch.zeros(min(tile, n_classes), layout.padded, dtype=torch.bfloat16, device=device)
    # float32 scratch, preallocated: fresh large tensors cost page faults and mixed-dtype arithmetic is slow
    scratch = torch.empty(wbuf.shape[0], max(m.dim for m in models), device=device) if measure else None
    out = torch.empty(n_rows, wbuf.shape[0], dtype=torch.bfloat16, device=device)
    for t0 in range(0, n_classes, tile):
        t1 = min(n_classes, t0 + tile)
        w = wbuf[: t1 - t0]
        for i, (model, off) in enumerate(zip(models, layout.offsets, strict=True)):
            part = w[:, off : off + model.dim]
            part.copy_(model.weight[t0:t1])
            if scratch is not None:
                residual = scratch[: t1 - t0, : model.dim].copy_(part).sub_(model.weight[t0:t1])
                dwmax[i] = max(dwmax[i], float(torch.linalg.vector_norm(residual, dim=1).max()))
        w[:, layout.width].copy_(layout.bias_hi[t0:t1])
        w[:, layout.width + 1].copy_(layout.bias_lo[t0:t1])
        if t1 - t0 == out.shape[1]:
            tops.add(torch.mm(xcat, w.t(), out=out), t0)
        else:
            tops.add(torch.mm(xcat, w.t()), t0)
    if measure:
        for model, d in zip(models, dwmax, strict=True):
            model.dwmax = d

    in_err = torch.zeros(n_rows, dtype=torch.float64, device=device)
    mass = torch.zeros(n_rows, dtype=torch.float64, device=device)
    for model, x, nx, off in zip(models, xs, norms, layout.offsets, strict=True):
        residual = xcat[:, off : off + model.dim].to(torch.float32)
        residual.sub_(x / model.n_views if model.n_views != 1 else x)
        res = torch.linalg.vector_norm(residual, dim=1).double()
        nxm = nx / model.n_views
        nxh = nxm + res  # >= ||bf16(x/n)||
        # x.w - xh.wh = (x - xh).w + xh.(w - wh), each bounded by Cauchy-Schwarz; x/n itself is off by U32 relative
        assert model.dwmax is not None
        in_err += (res + 2 * U32 * nxm) * model.wmax + nxh * model.dwmax
        mass += nxh * model.wmax * (1 + 2.0**-8)
    bsum = sum(model.bmax for model in models)
    accum = _gamma(layout.padded, U32) * (mass + 2 * bsum)  # float32 accumulation inside the GEMM
    bias_err = (len(models) * U32 + 2.0**-16) * bsum  # float32 sum of biases, then the hi/lo split
    return SAFETY * (in_err + accum + bias_err) + layout.padded * 2.0**-125


def _survivors(
    vals: torch.Tensor, left: torch.Tensor, err: torch.Tensor, rho: float, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which kept approximate scores vals [R, S] can still be in the top-k, given |approx - real| <= err + rho|approx|
    (err [R]): keep [R, S] bool; and overflow [R], rows where a left-out class (<= left [R]) might be too."""
    kth = vals.topk(k, dim=1).values[:, -1]
    low = kth - rho * kth.abs() - err  # the k-th best real score is at least this
    keep = vals + rho * vals.abs() + err[:, None] >= low[:, None]
    overflow = ~torch.isfinite(vals).all(1) | ~torch.isfinite(err)
    left_high = left + rho * left.abs() + err >= low
    overflow |= torch.isfinite(left) & left_high | torch.isnan(left)
    return keep & ~overflow[:, None], overflow


def _sampled_scores(
    models: list[_Model], xs: list[torch.Tensor], bias: torch.Tensor, rows: torch.Tensor, cls: torch.Tensor
) -> torch.Tensor:
    """float32 ensemble scores [P] of (row, class) pairs sorted by row then class, computed as a sampled dense-dense
    product so that no [P, D] gather of weight rows is materialized."""
    n_rows = xs[0].shape[0]
    counts = torch.bincount(rows, minlength=n_rows)
    crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    scores = bias.index_select(0, cls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(crow, cls, torch.zeros_like(scores), size=(n_rows, bias.shape[0]))
        for model, x in zip(models, xs, strict=True):
            sampled = torch.sparse.sampled_addmm(pattern, x, model.weight.t(), beta=0.0, alpha=1.0 / model.n_views)
            if not torch.equal(sampled.col_indices(), cls):
                raise RuntimeError("internal error: sampled_addmm reordered the pattern")
            scores = scores + sampled.values()
    return scores


def _fallback_pairs(
    models: list[_Model], xs: list[torch.Tensor], bias: torch.Tensor, rows: torch.Tensor, k: int, e32: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, class) candidate pairs for rows with more near-tied classes than the scan kept: full float32 rows."""
    n_classes = bias.shape[0]
    group = max(1, FALLBACK_ELEMS // n_classes)
    out_r, out_c = [], []
    for g0 in range(0, rows.numel(), group):
        g = rows[g0 : g0 + group]
        scores = bias.expand(g.numel(), -1).clone()
        for model, x in zip(models, xs, strict=True):
            scores.addmm_(x.index_select(0, g), model.weight.t(), alpha=1.0 / model.n_views)
        if not bool(torch.isfinite(scores).all()):
            raise ValueError("ensemble scores overflow float32")
        s64, e = scores.double(), e32.index_select(0, g)[:, None]
        kth = s64.topk(k, dim=1).values[:, -1:]
        r, c = torch.nonzero(s64 + e >= kth - e, as_tuple=True)
        out_r.append(g.index_select(0, r))
        out_c.append(c)
    return torch.cat(out_r), torch.cat(out_c)


def _tree_sum(p: torch.Tensor) -> torch.Tensor:
    """Row sums of p [P, D] in a fixed pairwise order (elementwise adds only), hence bitwise reproducible anywhere."""
    width = 1 << (p.shape[1] - 1).bit_length()
    if width != p.shape[1]:
        p = torch.nn.functional.pad(p, (0, width - p.shape[1]))
    while p.shape[1] > 1:
        half = p.shape[1] // 2
        p = p[:, :half] + p[:, half:]
    return p[:, 0]


def _canonical(models: list[_Model], xs: list[torch.Tensor], rows: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Canonical float64 ensemble scores [P] of (row, class) pairs: products of float32 values are exact in float64,
    sums follow fixed trees and the models are added in order, so the value depends on the inputs alone."""
    total = torch.zeros(rows.numel(), dtype=torch.float64, device=rows.device)
    step = max(1, PAIR_BYTES // (8 * max(m.dim for m in models)))
    for s in range(0, rows.numel(), step):
        r, c = rows[s : s + step], cls[s : s + step]
        acc = torch.zeros(r.numel(), dtype=torch.float64, device=rows.device)
        for model, x in zip(models, xs, strict=True):
            prod = x.index_select(0, r).double().mul_(model.weight.index_select(0, c).double())
            acc = acc + (_tree_sum(prod) / model.n_views + model.bias.index_select(0, c).double())
        total[s : s + step] = acc
    return total


def _select(
    rows: torch.Tensor, cls: torch.Tensor, scores: torch.Tensor, n_rows: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k pairs with the highest score, ties to the lower class: indices [R, k], scores [R, k] float64."""
    r, c, v = rows.cpu().numpy(), cls.cpu().numpy(), scores.cpu().numpy()
    order = np.lexsort((c, -v, r))  # by row, then score descending, then class
    counts = np.bincount(r, minlength=n_rows)
    if (counts < k).any():
        raise RuntimeError("internal error: a row kept fewer than k candidates")
    take = order[((np.cumsum(counts) - counts)[:, None] + np.arange(k)).reshape(-1)]
    return torch.from_numpy(c[take]).view(n_rows, k), torch.from_numpy(v[take]).view(n_rows, k)


def _chunk_topk(
    models: list[_Model],
    xs: list[torch.Tensor],
    bias: torch.Tensor,
    layout: _Bf16Layout | None,
    *,
    k: int,
    n_keep: int,
    tile: int,
    first_row: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (classes [R, k], canonical scores [R, k] float64, on the CPU) of one chunk, xs[m] float32 [R, D_m]."""
    n_rows, n_classes = xs[0].shape[0], bias.shape[0]
    norms = [torch.linalg.vector_norm(x, dim=1).double() for x in xs]
    for i, nx in enumerate(norms):  # finite iff the row is (float16 values cannot overflow the norm)
        if not bool(torch.isfinite(nx).all()):
            bad = first_row + int(torch.nonzero(~torch.isfinite(nx))[0])
            raise ValueError(f"sets[{i}]: features row {bad} is not finite (or its norm overflows)")
    # |float32 score - canonical| <= e32 for every class: float32 dot products, 1/n scaling, sums over models, and
    # the canonical score's own (float64) distance from the real one
    mass = sum(nx * (m.wmax / m.n_views) for m, nx in zip(models, norms, strict=True))
    mass = mass + sum(m.bmax for m in models)
    depth = max(m.dim for m in models) + 4 * len(models) + 16
    e32 = SAFETY * (_gamma(depth, U32) + 80 * U64) * mass + TINY
    tops = _TileTops(n_keep)
    if layout is None:
        _scan_fp32(models, xs, bias, tops, tile)
        vals, cand, left = tops.result()
        keep, overflow = _survivors(vals, left, e32, 0.0, k)
        r, j = torch.nonzero(keep, as_tuple=True)
        c = cand[r, j]
    else:
        e0 = _scan_bf16(models, xs, norms, bias, layout, tops, tile) + 80 * U64 * mass
        vals, cand, left = tops.result()
        keep, overflow = _survivors(vals, left, e0, BF16_OUT, k)
        r, j = torch.nonzero(keep, as_tuple=True)
        c = cand[r, j]
        order = torch.sort(r * n_classes + c).indices  # by row, then class (as CSR wants); the keys are distinct
        r, j, c = r[order], j[order], c[order]
        # rescore the survivors in float32 and apply the much tighter float32 margin
        s32 = _sampled_scores(models, xs, bias, r, c).double()
        if not bool(torch.isfinite(s32).all()):
            raise ValueError("ensemble scores overflow float32")
        dense = torch.full(vals.shape, -math.inf, dtype=torch.float64, device=vals.device)
        dense[r, j] = s32
        kth = dense.topk(k, dim=1).values[:, -1]
        tight = s32 + e32[r] >= kth[r] - e32[r]
        r, c = r[tight], c[tight]
    spill = torch.nonzero(overflow).squeeze(1)
    if spill.numel():
        r2, c2 = _fallback_pairs(models, xs, bias, spill, k, e32)
        r, c = torch.cat([r, r2]), torch.cat([c, c2])
    return _select(r, c, _canonical(models, xs, r, c), n_rows, k)


def ensemble_topk(
    sets: Sequence[Any],
    *,
    k: int = 1,
    chunk_rows: int = 4096,
    tile_classes: int = 4096,
    fast: bool | str = False,
    device: str | torch.device | None = None,
    candidates: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k classes of the ensemble ``sum_m (F_m @ W_m.T / n_views_m + b_m)`` for every row, streamed.

    ``sets``: FeatureSets (or anything with features/weight/bias/n_views, or 4-tuples of them), all with the same N
    rows and K classes; feature dims may differ between models (no id or class checks here: see check_compatible).
    Rows go ``chunk_rows`` at a time and classes ``tile_classes`` at a time, so memory stays near
    chunk_rows x (tile_classes + sum of D) x 4 bytes whatever N and K. ``fast`` scans with one bfloat16 GEMM (inputs
    rounded, float32 accumulation) instead of float32 ones; ``fast="auto"`` takes it only where it pays
    (`choose_scan`). Each class tile keeps its ``candidates`` best classes
    per row (default max(k, 16) fast, max(k, 4) exact); a row whose error margin could reach a class left out is
    recomputed in float32. Both paths then rescore the surviving candidates canonically in float64 and return the
    same result: indices int64 [N, k] and scores float32 [N, k], on the CPU, best first, ties to the lower class.
    ``device`` (default CPU) runs the arithmetic there, e.g. "cuda". The float32 matmul precision is forced to
    "highest" during the call (and CUDA's reduced-precision bf16 reductions off), as the error bounds require.
    """
    if k < 1:
        raise ValueError(f"k={k}: must be >= 1")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows={chunk_rows}: must be >= 1")
    if tile_classes < 1:
        raise ValueError(f"tile_classes={tile_classes}: must be >= 1")
    if not sets:
        raise ValueError("sets is empty: nothing to ensemble")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if fast == "auto":
        fast = choose_scan(dev).bf16
    elif not isinstance(fast, bool):
        raise ValueError(f"fast={fast!r}: must be True, False or 'auto'")
    n_keep = max(k, 16 if fast else 4) if candidates is None else int(candidates)
    if n_keep < k:
        raise ValueError(f"candidates={candidates}: must be >= k={k}")
    with torch.no_grad(), _ieee_matmul(dev):
        models = _prepare(sets, dev)
        n_rows, n_classes = int(models[0].features.shape[0]), int(models[0].weight.shape[0])
        for i, model in enumerate(models):
            if model.features.shape[0] != n_rows or model.weight.shape[0] != n_classes:
                raise ValueError(
                    f"sets[{i}]: {model.features.shape[0]} rows x {model.weight.shape[0]} classes, "
                    f"but sets[0] has {n_rows} x {n_classes}"
                )
        if k > n_classes:
            raise ValueError(f"k={k}: larger than the {n_classes} classes")
        if fast and not _bf16_gemm_sound(str(dev)):
            warnings.warn(f"bf16 matmul on {dev} does not accumulate in float32; using the exact path", stacklevel=2)
            fast = False
        bias = models[0].bias.clone()
        for model in models[1:]:
            bias += model.bias
        layout = _Bf16Layout.build(models, bias) if fast else None
        out_idx = torch.empty(n_rows, k, dtype=torch.int64)
        out_scores = torch.empty(n_rows, k, dtype=torch.float32)
        for start in range(0, n_rows, chunk_rows):
            stop = min(n_rows, start + chunk_rows)
            xs = [_rows(model.features, start, stop, dev) for model in models]
            idx, scores = _chunk_topk(models, xs, bias, layout, k=k, n_keep=n_keep, tile=tile_classes, first_row=start)
            out_idx[start:stop] = idx
            out_scores[start:stop] = scores.float()
    return out_idx, out_scores


def logit_memory_bytes(n_rows: int, n_classes: int, *, itemsize: int = 4) -> int:
    """Bytes a naive all-logits approach needs: n_rows x n_classes x itemsize (250,130 x 50,030 x 4 = ~50 GB)."""
    return int(n_rows) * int(n_classes) * int(itemsize)
