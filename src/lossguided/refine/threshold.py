"""A drop threshold found from the recorded losses alone, per class: `refine.drop_loss_above: auto`.

Why per class: one global cut (the paper's 9 nats, or a valley read off a histogram) is tuned with the answers in
view and fails on the tail, whose correctly labelled images still have high loss after pre-training; a cut that
suits the head empties the rarest classes. Why a mixture: after pre-training, a class's average losses are a mix of
two populations, the labels the model agrees with (low loss) and those it does not (high loss); on a log scale both
are close to Gaussian. Like DivideMix's clean-probability split, we fit a two-component Gaussian mixture to the
log-losses, here of every class at once (vectorised EM over a [K, 2] parameter table), and drop a sample when the
high-loss component is the more probable one (posterior > 0.5), i.e. above the first crossing of the two weighted
densities. A class is fitted on its own when it has at least `min_fit` samples and its two components are well
separated (Ashman's D >= `min_separation`); otherwise it takes the global fit's threshold, and where even the
global fit finds no second mode nothing is dropped (clean data loses nothing). No threshold is below ln 2 nats: a
sample whose given label the model still rates at 50% or more is no evidence of a wrong label (on clean data the
log scale can split the very easy from the merely easy, and without this floor a sixth of a clean set was dropped).
Every class keeps at least its `min_keep` lowest-loss samples (the paper's idea that each class keeps a few of its
easiest), so no class is emptied.

The estimated noise rate of a class is the share of its samples above its threshold. Pure numpy, O(N) per EM step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AutoThreshold", "estimate_drop_threshold"]

_LOG_FLOOR = 1e-4  # losses below this are one population (perfectly fitted); the floor keeps log finite
_ITERS = 100
_GLOBAL_SAMPLE = 200_000  # the global fit (an init and the fallback) reads a seeded sample of at most this many
_TOL = 1e-9  # EM stops once no group's means move more than this (log-nats) in an iteration


@dataclass(frozen=True)
class AutoThreshold:
    """Per-class drop thresholds [K] (nats; +inf keeps the whole class) and how they were found."""

    per_class: np.ndarray  # [K] float64
    global_threshold: float  # from the fit of all losses together (+inf: one mode, nothing dropped)
    noise_rate: float  # estimated share of wrong labels: samples above their class's threshold
    noise_rate_per_class: np.ndarray  # [K]
    fitted_alone: np.ndarray  # [K] bool: the class had its own well-separated fit
    method: str

    def keep_mask(self, labels: np.ndarray, losses: np.ndarray) -> np.ndarray:
        """[N] bool: which samples stay (loss <= their class's threshold)."""
        return np.asarray(losses, dtype=np.float64) <= self.per_class[np.asarray(labels)]

    def summary(self) -> dict:
        """JSON-ready: what went into the selection stats, metrics.json and the report."""
        finite = self.per_class[np.isfinite(self.per_class)]
        return {
            "drop_threshold_method": self.method,
            "drop_threshold_global": _json_float(self.global_threshold),
            "drop_threshold_median": _json_float(float(np.median(finite))) if finite.size else None,
            "drop_threshold_per_class": [_json_float(t) for t in self.per_class.tolist()],
            "classes_fitted_alone": int(self.fitted_alone.sum()),
            "estimated_noise_rate": round(self.noise_rate, 6),
            "estimated_noise_rate_per_class": [round(r, 6) for r in self.noise_rate_per_class.tolist()],
        }


def estimate_drop_threshold(
    labels: np.ndarray,
    losses: np.ndarray,
    *,
    num_classes: int | None = None,
    min_fit: int = 40,
    min_separation: float = 2.0,
    min_keep: int = 5,
    min_threshold: float = float(np.log(2.0)),
    fallback: str = "global",
    min_clean_share: float = 0.0,
) -> AutoThreshold:
    """Per-class loss thresholds from a two-component mixture of log-losses, with a global fallback.

    labels [N] int (given labels), losses [N] finite >= 0 (average recorded losses). min_fit: fewest samples a class
    needs for its own fit; min_separation: Ashman's D a fit needs to count as two modes; min_keep: each class keeps
    at least this many of its lowest-loss samples; min_threshold: no class drops a loss at or below it (ln 2: the
    model rates the given label >= 50%). fallback: what a class without its own two-mode fit gets, "global" (the
    global fit's threshold) or "none" (+inf: the mixture drops nothing there; the hybrid rule decides instead).
    min_clean_share: a class's own fit counts only when its low-loss component holds at least this share (the
    hybrid rule: 0.5, since EM can split one mode into a sliver and the rest, whose cut then drops almost the whole
    class; a class whose right labels are the minority cannot be told from a hard class by its losses anyway).
    """
    if fallback not in ("global", "none"):
        raise ValueError(f"fallback must be 'global' or 'none', got {fallback!r}")
    labels = np.asarray(labels)
    losses = np.asarray(losses, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != losses.shape or labels.dtype.kind not in "iu":
        raise ValueError(
            f"labels and losses must be 1-D of one length (integer labels), got {labels.shape} "
            f"{labels.dtype} and {losses.shape}"
        )
    if losses.size and not (np.isfinite(losses).all() and losses.min() >= 0):
        raise ValueError("losses must be finite and >= 0")
    if min_fit < 4 or min_keep < 0 or not min_separation > 0:
        raise ValueError(
            f"need min_fit >= 4, min_keep >= 0, min_separation > 0; got {min_fit}, {min_keep}, {min_separation}"
        )
    k = int(num_classes if num_classes is not None else (labels.max() + 1 if labels.size else 0))
    x = np.log(np.maximum(losses, _LOG_FLOOR))

    sample = x if x.size <= _GLOBAL_SAMPLE else np.random.default_rng(0).choice(x, _GLOBAL_SAMPLE, replace=False)
    glob = _fit(sample, np.zeros(sample.size, dtype=np.int64), 1)
    global_t = float(_threshold(glob)[0]) if _separated(glob, min_separation)[0] else np.inf
    counts = np.bincount(labels, minlength=k)
    per = _fit_eligible(x, labels, counts >= min_fit, init=glob)
    own = _separated(per, min_separation) & (counts >= min_fit) & (per.weight[:, 0] >= min_clean_share)
    thresholds = np.where(own, _threshold(per), global_t if fallback == "global" else np.inf)
    thresholds = np.maximum(np.exp(thresholds), min_threshold)  # back to nats; exp(inf) = inf
    thresholds = np.maximum(thresholds, _kth_smallest(losses, labels, k, min_keep))
    dropped = np.bincount(labels, weights=losses > thresholds[labels], minlength=k)
    rate_c = np.divide(dropped, counts, out=np.zeros(k), where=counts > 0)
    return AutoThreshold(
        per_class=thresholds,
        global_threshold=float(np.exp(global_t)),
        noise_rate=float(dropped.sum() / max(losses.size, 1)),
        noise_rate_per_class=rate_c,
        fitted_alone=own,
        method=f"per-class 2-component mixture of log-losses (classes >= {min_fit} samples, D >= {min_separation}), "
        f"else {'the global fit' if fallback == 'global' else 'no loss threshold'}; "
        f"never below {min_threshold:.3g} nats; each class keeps >= {min_keep}",
    )


@dataclass
class _Mixture:
    """Two Gaussian components per group: index 0 the low-loss (clean) one. Arrays [G, 2]."""

    weight: np.ndarray
    mean: np.ndarray
    var: np.ndarray


def _fit(x: np.ndarray, group: np.ndarray, g: int, *, init: _Mixture | None = None) -> _Mixture:
    """EM for every group at once. Starts from the group's quartiles (or the global fit) and keeps component 0
    the lower mean."""
    n = np.bincount(group, minlength=g).astype(np.float64)
    safe_n = np.maximum(n, 1)
    mean_all = np.bincount(group, weights=x, minlength=g) / safe_n
    var_all = np.maximum(np.bincount(group, weights=x * x, minlength=g) / safe_n - mean_all**2, 1e-6)
    if init is None:
        sd = np.sqrt(var_all)
        mean = np.stack([mean_all - sd, mean_all + sd], axis=1)
        var = np.stack([var_all, var_all], axis=1) / 4
        weight = np.full((g, 2), 0.5)
    else:
        mean = np.repeat(init.mean, g, axis=0)
        var = np.repeat(init.var, g, axis=0)
        weight = np.repeat(init.weight, g, axis=0)
    floor = np.maximum(var_all * 1e-3, 1e-6)[:, None]
    total_x, total_xx = mean_all * n, np.bincount(group, weights=x * x, minlength=g)
    xx = x * x
    for _ in range(_ITERS):
        resp = _responsibility(x, group, weight, mean, var)  # [N] posterior of component 1
        # component 1's sums by bincount, component 0's as the group totals minus them: half the passes over N
        m1 = np.bincount(group, weights=resp, minlength=g)
        s1 = np.bincount(group, weights=resp * x, minlength=g)
        q1 = np.bincount(group, weights=resp * xx, minlength=g)
        mass = np.stack([np.maximum(n - m1, 0.0), m1], axis=1)
        sums = np.stack([total_x - s1, s1], axis=1)
        sq = np.stack([np.maximum(total_xx - q1, 0.0), q1], axis=1)
        m = np.maximum(mass, 1e-9)
        new_mean = np.where(mass > 1e-6, sums / m, mean)
        var = np.maximum(np.where(mass > 1e-6, sq / m - new_mean**2, var), floor)
        moved = np.abs(new_mean - mean).max(initial=0.0)
        mean, weight = new_mean, mass / safe_n[:, None]
        if moved < _TOL:  # converged: every group's means stopped moving
            break
    order = np.argsort(mean, axis=1)
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return _Mixture(take(weight), take(mean), take(var))


def _fit_eligible(x: np.ndarray, labels: np.ndarray, eligible: np.ndarray, *, init: _Mixture) -> _Mixture:
    """The per-class fit of the classes large enough for one ([K] bool `eligible`); the others hold the initial
    (global) parameters, which nothing reads. EM treats every class apart, so leaving the small ones out changes
    no fitted class, and at 50,030 classes most rows of small classes no longer cost 100 passes."""
    k = len(eligible)
    out = _Mixture(*(np.repeat(getattr(init, f), k, axis=0) for f in ("weight", "mean", "var")))
    if not eligible.any():
        return out
    rows = eligible[labels]
    index = np.cumsum(eligible) - 1
    fitted = _fit(x[rows], index[labels[rows]], int(eligible.sum()), init=init)
    for f in ("weight", "mean", "var"):
        getattr(out, f)[eligible] = getattr(fitted, f)
    return out


def _responsibility(x, group, weight, mean, var) -> np.ndarray:
    """[N] posterior of component 1: the log-odds b - a is a quadratic in x per group, so three gathers of its
    coefficients replace six of the components' parameters."""
    with np.errstate(divide="ignore"):
        c = np.log(weight) - 0.5 * np.log(2 * np.pi * var) - 0.5 * mean**2 / var  # [G, 2]
    coef_a = -0.5 / var[:, 1] + 0.5 / var[:, 0]
    coef_b = mean[:, 1] / var[:, 1] - mean[:, 0] / var[:, 0]
    coef_c = c[:, 1] - c[:, 0]
    with np.errstate(over="ignore", invalid="ignore"):
        odds = (coef_a[group] * x + coef_b[group]) * x + coef_c[group]
        p = 1.0 / (1.0 + np.exp(-odds))
    return np.nan_to_num(p, nan=0.5)


def _separated(mix: _Mixture, min_separation: float) -> np.ndarray:
    """[G] bool: two real modes (Ashman's D) each holding at least 2% of the group."""
    d = np.sqrt(2) * (mix.mean[:, 1] - mix.mean[:, 0]) / np.sqrt(mix.var.sum(axis=1))
    return (d >= min_separation) & (mix.weight.min(axis=1) >= 0.02)


def _threshold(mix: _Mixture) -> np.ndarray:
    """[G] log-loss where the high component's weighted density first overtakes the low one's, above the low
    component's mean: the root of a quadratic (equal variances: a linear equation)."""
    w0, w1 = mix.weight[:, 0], mix.weight[:, 1]
    m0, m1 = mix.mean[:, 0], mix.mean[:, 1]
    v0, v1 = mix.var[:, 0], mix.var[:, 1]
    # log w1 - log s1 - (x-m1)^2/2v1 = log w0 - log s0 - (x-m0)^2/2v0  ->  a x^2 + b x + c = 0
    a = 0.5 / v0 - 0.5 / v1
    b = m1 / v1 - m0 / v0
    with np.errstate(divide="ignore"):
        c = 0.5 * m0**2 / v0 - 0.5 * m1**2 / v1 + np.log(w1 / w0) - 0.5 * np.log(v1 / v0)
    out = np.full(len(a), np.nan)
    lin = np.abs(a) < 1e-12
    out[lin] = -c[lin] / np.where(b[lin] == 0, np.nan, b[lin])
    disc = b**2 - 4 * a * c
    quad = ~lin & (disc >= 0)
    sq = np.sqrt(np.where(quad, disc, 0))
    r1 = (-b - sq) / np.where(quad, 2 * a, 1)
    r2 = (-b + sq) / np.where(quad, 2 * a, 1)
    lo, hi = np.minimum(r1, r2), np.maximum(r1, r2)
    first = np.where(lo >= m0, lo, np.where(hi >= m0, hi, np.nan))
    out[quad] = first[quad]
    # no crossing above the clean mean: the high component never wins there, so nothing is dropped
    return np.where(np.isnan(out), np.inf, out)


def _kth_smallest(losses: np.ndarray, labels: np.ndarray, k: int, m: int) -> np.ndarray:
    """[K] the m-th smallest loss of each class (its largest loss when it has fewer; -inf when m = 0 or empty)."""
    out = np.full(k, -np.inf)
    if m == 0 or losses.size == 0:
        return out
    order = np.lexsort((losses, labels))
    lab = labels[order]
    starts = np.searchsorted(lab, np.arange(k))
    counts = np.bincount(labels, minlength=k)
    has = counts > 0
    pos = starts + np.minimum(counts, m) - 1
    out[has] = losses[order][pos[has]]
    return out


def _json_float(v: float) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 6)


def agreeing_mask(labels: np.ndarray, losses: np.ndarray, preds: np.ndarray, *, min_keep: int = 5) -> np.ndarray:
    """[N] bool: samples whose recorded prediction is their given label, plus each class's `min_keep` lowest-loss
    samples (no class is emptied). Why: a look-alike wrong label is partly learned, so its loss can sit inside the
    clean mode of its class (no second mode for the mixture to find), yet a model that has not fully memorised it
    still rates the true class higher: the disagreement catches what the loss threshold cannot, without labels."""
    labels, losses = np.asarray(labels), np.asarray(losses, dtype=np.float64)
    keep = np.asarray(preds) == labels
    order = np.lexsort((losses, labels))  # by class, then loss
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    keep[order[np.arange(len(order)) - starts < min_keep]] = True
    return keep


def confident_other_mask(
    labels: np.ndarray,
    losses: np.ndarray,
    p_label: np.ndarray,
    top_classes: np.ndarray,
    top_probs: np.ndarray,
    *,
    num_classes: int,
    min_keep: int = 5,
) -> np.ndarray:
    """[N] bool: samples that are *confidently another class*, the confident-learning rule (Northcutt et al.) on the
    recorded probabilities: class j's threshold is the mean p(j) over the samples labelled j, and a sample goes
    when, among the classes whose probability reaches their own threshold (its top-5 and its label), the most
    probable is not its label. Each class keeps its `min_keep` lowest-loss samples.

    Why: a rare class that looks like a head class (a shirt beside many T-shirts) has high losses even where its
    labels are right, so a rule over the class's own losses drops its hard, correct images. Here they stay unless
    the other class is as sure of them as it is of its own images."""
    labels = np.asarray(labels)
    p_label = np.asarray(p_label, dtype=np.float64)
    top_classes = np.asarray(top_classes)
    top_probs = np.asarray(top_probs, dtype=np.float64)
    counts = np.bincount(labels, minlength=num_classes)
    mean_self = np.bincount(labels, weights=p_label, minlength=num_classes) / np.maximum(counts, 1)
    thresholds = np.where(counts > 0, mean_self, np.inf)
    other = (top_classes >= 0) & (top_classes != labels[:, None])
    confident = other & (top_probs >= thresholds[top_classes.clip(0)])
    best_other = np.where(confident, top_probs, -1.0).max(axis=1, initial=-1.0)
    own = np.where(p_label >= thresholds[labels], p_label, -1.0)
    drop = best_other > own
    order = np.lexsort((np.asarray(losses, dtype=np.float64), labels))  # by class, then loss
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    drop[order[np.arange(len(order)) - starts < min_keep]] = False
    return drop
