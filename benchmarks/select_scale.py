"""Time stage-2 selection at AliProducts scale against one ``np.lexsort((losses, labels))`` of the same arrays.

Generates a seeded long-tailed data set (2,552,385 samples in 50,030 classes by default, many classes under 5 samples,
float32 losses rounded to 3 decimals so that they tie, a share of high-loss noise), then times, in this process and
best of ``--repeat``, the lexsort and one ``select`` with the bands 1-5, 6-10, 11-15 and median. The last line printed
is ``ratio=<select time / lexsort time>``; the requirement is ratio < 1.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc

import numpy as np

from lossguided.refine import select

BANDS = ("1-5", "6-10", "11-15", "median")


def class_sizes(rng: np.random.Generator, n_samples: int, n_classes: int, sigma: float) -> np.ndarray:
    """Log-normal class sizes (a long tail with many tiny classes) that sum to exactly n_samples, each >= 1."""
    raw = rng.lognormal(0.0, sigma, n_classes)
    sizes = np.maximum(1, np.floor(raw * (n_samples / raw.sum()))).astype(np.int64)
    surplus = int(sizes.sum()) - n_samples  # fix the rounding on the largest classes, which barely notice
    largest = np.argsort(sizes)[::-1]
    while surplus:
        step = np.sign(surplus)
        take = largest[: abs(surplus)]
        take = take[sizes[take] - step >= 1]
        sizes[take] -= step
        surplus -= step * take.size
    return sizes


def make_data(
    n_samples: int, n_classes: int, *, seed: int, sigma: float, noise: float, sorted_ids: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ids (int64, unique, non-contiguous), labels (int64), losses (float32 with ties); shapes (N,); and sizes (C,)."""
    rng = np.random.default_rng(seed)
    sizes = class_sizes(rng, n_samples, n_classes, sigma)
    labels = rng.permutation(np.repeat(np.arange(n_classes, dtype=np.int64), sizes))
    noisy = rng.random(n_samples) < noise
    losses = np.where(noisy, rng.uniform(2.0, 16.0, n_samples), rng.gamma(1.0, 0.6, n_samples))
    losses = np.round(losses, 3).astype(np.float32)
    ids = np.sort(rng.choice(4 * n_samples, n_samples, replace=False)).astype(np.int64)
    if not sorted_ids:
        ids = rng.permutation(ids)
    return ids, labels, losses, sizes


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2_552_385, help="number of samples (default: AliProducts)")
    parser.add_argument("--classes", type=int, default=50_030, help="number of classes (default: AliProducts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma", type=float, default=1.5, help="log-normal spread of the class sizes")
    parser.add_argument("--noise", type=float, default=0.08, help="share of high-loss (noisy) samples")
    parser.add_argument("--sorted-ids", action="store_true", help="ids in ascending order (default: shuffled)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many timings")
    args = parser.parse_args(argv)

    ids, labels, losses, sizes = make_data(
        args.samples, args.classes, seed=args.seed, sigma=args.sigma, noise=args.noise, sorted_ids=args.sorted_ids
    )
    distinct = np.unique(losses).size
    print(
        f"data: {ids.size:,} samples, {sizes.size:,} classes (sizes {sizes.min()}..{sizes.max()}, "
        f"{int((sizes < 5).sum()):,} under 5), {distinct:,} distinct float32 losses, "
        f"{int((losses > 9.0).sum()):,} above 9, ids {'sorted' if args.sorted_ids else 'shuffled'}"
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    tracemalloc.start()  # numpy reports its buffers to tracemalloc: the peak is select's own working memory
    result = select(ids, labels, losses, bands=BANDS)
    peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print("selected: " + ", ".join(f"{band} {result[band].size:,}" for band in BANDS))

    t_lexsort = best_time(lambda: np.lexsort((losses, labels)), args.repeat)
    t_select = best_time(lambda: select(ids, labels, losses, bands=BANDS), args.repeat)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"lexsort((losses, labels)): {t_lexsort * 1e3:.1f} ms (best of {args.repeat})")
    print(f"select, bands {' '.join(BANDS)}: {t_select * 1e3:.1f} ms (best of {args.repeat})")
    print(
        f"select peak memory: {peak_mib:.0f} MiB (tracemalloc); process max RSS {rss_after:.0f} MiB "
        f"({rss_before:.0f} MiB before any select or lexsort)"
    )
    print(f"ratio={t_select / t_lexsort:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
