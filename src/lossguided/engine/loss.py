"""Cross-entropy with the paper's label smoothing (eq. 1) through PyTorch's built-in smoothing.

Eq. (1) puts 1-eps on the true class and eps/(K-1) on each other class. PyTorch's `label_smoothing=s` puts
1-s+s/K on the true class and s/K elsewhere; setting s = eps*K/(K-1) makes the two identical.
"""

from __future__ import annotations

from torch import nn


def torch_smoothing(eps: float, num_classes: int) -> float:
    """The PyTorch `label_smoothing` value that realizes eq. (1) for K classes."""
    from lossguided.config import ConfigError

    if eps == 0.0:
        return 0.0
    if num_classes < 2:
        raise ConfigError(f"label smoothing needs at least 2 classes, got {num_classes}")
    if not 0.0 < eps <= (num_classes - 1) / num_classes:  # beyond, the true class gets less than the others
        raise ConfigError(
            f"label smoothing eps must be in [0, (K-1)/K = {(num_classes - 1) / num_classes:.3g}] "
            f"for K={num_classes} classes, got {eps}"
        )
    return eps * num_classes / (num_classes - 1)


def create_criterion(*, num_classes: int, smoothing: float = 0.0) -> nn.CrossEntropyLoss:
    """Per-sample losses (reduction='none'): the step averages them and the loss recorder keeps them."""
    return nn.CrossEntropyLoss(reduction="none", label_smoothing=torch_smoothing(smoothing, num_classes))
