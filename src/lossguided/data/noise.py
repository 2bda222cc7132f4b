"""Seeded long-tail subsampling and label noise, so that a clean dataset becomes a reproducible noisy benchmark.

Pure numpy. The true labels are kept by the callers, so noise detection can be scored afterwards.
"""

from __future__ import annotations

import numpy as np

NOISE_KINDS = ("symmetric", "pairflip", "confusion")


def long_tail_counts(class_sizes: np.ndarray, *, imbalance_ratio: float) -> np.ndarray:
    """Exponential profile: class c keeps n_max * ratio**(-c/(K-1)) samples, capped by what it has. [K] -> [K]."""
    class_sizes = np.asarray(class_sizes)
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    k = len(class_sizes)
    n_max = int(class_sizes.max())
    profile = imbalance_ratio ** (-np.arange(k) / max(k - 1, 1))
    return np.minimum(class_sizes, np.maximum(1, np.floor(n_max * profile)).astype(np.int64))


def long_tail_subset(labels: np.ndarray, *, imbalance_ratio: float, seed: int) -> np.ndarray:
    """Indices (sorted) of a long-tailed subset: class 0 is the head, the last class the tail. [N] -> [M]."""
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1
    counts = long_tail_counts(np.bincount(labels, minlength=num_classes), imbalance_ratio=imbalance_ratio)
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in enumerate(counts)]
    return np.sort(np.concatenate(keep))


def add_label_noise(
    labels: np.ndarray,
    *,
    rate: float,
    kind: str = "symmetric",
    num_classes: int | None = None,
    seed: int = 0,
    target: np.ndarray | list[int] | None = None,
) -> np.ndarray:
    """Return noisy labels: a `rate` share of samples gets a wrong label. [N] -> [N].

    symmetric: the wrong label is uniform over the other K-1 classes; pairflip: class c becomes (c+1) mod K;
    confusion: class c becomes target[c], its look-alike (the way product catalogues are wrong: a shirt filed as a
    T-shirt). Exactly round(rate*N) samples are flipped, so the realized noise rate is the requested one.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind {kind!r} is not one of {NOISE_KINDS}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    labels = np.asarray(labels, dtype=np.int64)
    k = int(num_classes if num_classes is not None else labels.max() + 1)
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    flip = rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False)
    if kind == "confusion":
        target = np.asarray(target if target is not None else [], dtype=np.int64)
        if target.shape != (k,) or (target < 0).any() or (target >= k).any() or (target == np.arange(k)).any():
            raise ValueError(f"confusion noise needs target: one other class in [0, {k}) per class, got {target}")
        noisy[flip] = target[labels[flip]]
        return noisy
    if kind == "symmetric":
        offset = rng.integers(1, k, size=len(flip))
    else:
        offset = np.ones(len(flip), dtype=np.int64)
    noisy[flip] = (labels[flip] + offset) % k
    return noisy
