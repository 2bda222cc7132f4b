"""Backbones from timm by name, their pre-classifier features and their classifier weights.

The ensemble (paper section 3.5) saves pre-classifier features and recomputes logits from each model's linear head,
so this module gives both halves of a timm model: `pre_logits` (features) and `classifier_weights` (W, b).
"""

from __future__ import annotations

import os

import timm
import torch
from torch import nn

PAPER_BACKBONES = ("resnet101", "resnext101_32x8d", "resnest101e", "res2net101_26w_4s", "tf_efficientnet_b7")


def create_model(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = False,
    pretrained_path: str | os.PathLike | None = None,
) -> nn.Module:
    """A timm model with a fresh `num_classes` head. ImageNet weights come through timm's own loading
    (`pretrained=True`, needs the hub) or from a local file (`pretrained_path`: .safetensors, .pth or .bin;
    loaded without executing code, the ImageNet classifier is dropped)."""
    if name not in timm.list_models() and not timm.is_model(name):
        from lossguided.config import ConfigError

        raise ConfigError(f"unknown timm model {name!r}; see timm.list_models('*pattern*'), e.g. {PAPER_BACKBONES}")
    kwargs = {}
    if pretrained_path is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_path), "num_classes": 1000}
        pretrained = True
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)


def pre_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled features the classifier sees, [B, D] (2048 for ResNet-101)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def classifier_weights(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The final linear layer as (W [K, D], b [K]); logits = pre_logits(x) @ W.T + b."""
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(model).__name__}: classifier is {type(head).__name__}, not a linear layer")
    bias = head.bias if head.bias is not None else torch.zeros(head.out_features, device=head.weight.device)
    return head.weight.detach(), bias.detach()
