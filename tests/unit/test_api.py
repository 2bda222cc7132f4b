"""The Python API at the package top: light to import, a DataFrame manifest, losses of any model and loader whose
batches carry ids, named results."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import lossguided


def test_import_is_light_and_lists_its_api():
    code = "import sys, lossguided; print('torch' in sys.modules, 'timm' in sys.modules, sorted(dir(lossguided)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False False")
    for name in ("load_manifest", "record_losses", "select", "rank_suspects", "run_recipe", "load_config"):
        assert name in out
    with pytest.raises(AttributeError):
        lossguided.no_such_thing  # noqa: B018


def test_load_manifest_from_a_dataframe(image_csv):
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(image_csv)
    manifest = lossguided.load_manifest(df, root=image_csv.parent)
    from_csv = lossguided.load_manifest(image_csv)
    assert manifest.classes == from_csv.classes and np.array_equal(manifest.labels, from_csv.labels)
    assert list(manifest.paths) == [str(p) for p in from_csv.paths] or all(
        str(a).endswith(str(b).split("/")[-1]) for a, b in zip(manifest.paths, from_csv.paths, strict=True)
    )
    with pytest.raises(lossguided.DataError, match="DataFrame: missing column"):
        lossguided.load_manifest(df.rename(columns={"path": "file"}), root=image_csv.parent)
    with pytest.raises(lossguided.DataError, match="row 0: image not found"):
        lossguided.load_manifest(df, root=image_csv.parent / "elsewhere")


class Fixed(nn.Module):
    """Logits that favour class (id % 3): samples labelled otherwise are the 'wrong labels'."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(x[:, 0].long() % 3, 3).float() * 4 + self.w


def test_record_losses_of_any_model_and_loader_then_select_and_rank():
    ids = torch.arange(30)
    labels = ids % 3
    labels[[4, 17, 23]] = (labels[[4, 17, 23]] + 1) % 3  # three wrong labels
    x = ids[:, None].float()
    # a mapping batch, and a padded last batch that repeats two samples (as DistributedSampler does)
    batches = [{"image": x[i : i + 8], "label": labels[i : i + 8], "id": ids[i : i + 8]} for i in range(0, 30, 8)]
    batches.append((x[:2], labels[:2], ids[:2]))
    table = lossguided.record_losses(Fixed(), batches, classes=["a", "b", "c"])
    assert isinstance(table, lossguided.LossTable) and len(table) == 30
    assert table.n_records[:2].tolist() == [2, 2] and table.n_records[2:].max() == 1
    assert table.classes.names == ("a", "b", "c")
    if getattr(table, "p_label", None) is not None:
        assert table.p_label[4] < 0.1 < table.p_label[0] and table.top_classes.shape == (30, 3)
    suspects = lossguided.rank_suspects(table, top=3)
    assert isinstance(suspects, lossguided.Suspects) and sorted(suspects.ids.tolist()) == [4, 17, 23]
    assert sorted(suspects.rank_in_class.tolist()) == [1, 1, 2] and suspects.class_names == ("a", "b", "c")
    keep = lossguided.select(table, bands="1-5", drop_loss_above=1.0)
    assert not set(keep.tolist()) & {4, 17, 23} and len(keep) == 15
    with pytest.raises(ValueError, match="cannot tie losses to samples"):
        lossguided.record_losses(Fixed(), [(x, labels)])


def test_record_losses_normalizes_with_the_models_own_statistics():
    import timm

    from lossguided.api import _model_normalization
    from lossguided.data.transforms import PAPER_MEAN

    model = timm.create_model("efficientnet_lite0", num_classes=3)
    mean, std = _model_normalization(model)
    assert mean == pytest.approx((123.675, 116.28, 103.53)) and std == pytest.approx((58.395, 57.12, 57.375))
    assert _model_normalization(object())[0] == PAPER_MEAN  # a model without a timm config: the paper's


def test_the_api_logs_unless_the_caller_configured_logging(monkeypatch):
    import logging

    from lossguided.api import _logging_on

    ours = logging.getLogger("lossguided")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(ours, "handlers", [])
    _logging_on()
    assert len(ours.handlers) == 1 and ours.level == logging.INFO
    _logging_on()
    assert len(ours.handlers) == 1  # once
    monkeypatch.setattr(ours, "handlers", [])
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])  # the caller's own set-up
    _logging_on()
    assert ours.handlers == []
