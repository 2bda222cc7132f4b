"""A clean fine-tune may reset or imprint the classifier it inherits (`finetune.head`, engine/head.py)."""

import numpy as np
import pytest
import torch

from lossguided.data.manifest import ClassMap, Manifest
from lossguided.data.sources import make_dataset
from lossguided.data.storage import Storage
from lossguided.engine.head import class_means, prepare_head
from lossguided.models import create_model


def _data():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 6)
    images = (rng.random((18, 16, 16)) * 60).astype(np.uint8)
    images[labels == 1] += 150  # class 1 bright: its centre differs from the others'
    manifest = Manifest(
        ids=np.arange(18), labels=labels, classes=ClassMap(("a", "b", "c")), source="t", storage=Storage.arrays(images)
    )
    return make_dataset(manifest, image_size=16), labels


def _model():
    torch.manual_seed(0)
    return create_model("resnet10t", num_classes=3)


def test_imprint_sets_each_row_to_its_class_centre_at_the_old_scale():
    ds, labels = _data()
    model = _model()
    old_norm = model.get_classifier().weight.norm(dim=1).mean().item()
    prepare_head(model, "imprint", dataset=ds, num_classes=3)
    head = model.get_classifier()
    centres = class_means(model, ds, num_classes=3)
    cos = torch.nn.functional.cosine_similarity(head.weight, centres, dim=1)
    assert torch.allclose(cos, torch.ones(3), atol=1e-4)
    assert torch.allclose(head.weight.norm(dim=1), torch.full((3,), old_norm), rtol=1e-4)
    assert torch.count_nonzero(head.bias) == 0
    assert model.training  # the mode it was in


def test_reset_draws_a_new_head_and_keep_leaves_it():
    ds, _ = _data()
    model = _model()
    before = model.get_classifier().weight.detach().clone()
    prepare_head(model, "keep", num_classes=3)
    assert torch.equal(model.get_classifier().weight, before)
    prepare_head(model, "reset", num_classes=3)
    assert model.get_classifier().weight.shape == before.shape
    assert not torch.equal(model.get_classifier().weight, before)
    with pytest.raises(ValueError, match="not one of"):
        prepare_head(model, "zero", num_classes=3)
