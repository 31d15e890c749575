"""IQABackbone interface, tiny presets, UIQA's views, the pyiqa zoo wrapper and the registry."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from rayiqa.models.backbones import NORM_TYPES, backbone_names, create_backbone, wrap_module
from rayiqa.models.backbones.pyiqa_zoo import PYIQA_REGRESSORS, HookedFeatures, load_pyiqa_backbone
from rayiqa.models.backbones.uiqa import centre_crop, grid_fragments


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    ("name", "norm_type", "feature_dim"),
    [("tiny-cnn", nn.BatchNorm2d, 64), ("tiny-vit", nn.LayerNorm, 32), ("tiny-uiqa", nn.LayerNorm, 3 * 32)],
)
def test_tiny_presets_forward_and_list_their_norm_layers(name, norm_type, feature_dim):
    backbone = create_backbone(name)
    assert backbone.weights == "random-init" and not backbone.training
    x = torch.rand(5, 3, 48, 80)  # any size: each preset resizes / crops itself
    features, scores = backbone(x)
    assert features.shape == (5, feature_dim) and scores.shape == (5,)
    assert torch.equal(backbone.regress(features), scores)
    norms = backbone.norm_layers()
    assert norms and all(isinstance(m, norm_type) for m in norms)
    every_norm = [m for m in backbone.modules() if isinstance(m, NORM_TYPES)]
    assert len(norms) == len(every_norm)  # the regressor heads of the presets hold no norm layer


@pytest.mark.parametrize("name", ["tiny-cnn", "tiny-vit", "tiny-uiqa"])
def test_tiny_presets_have_the_same_weights_in_every_process_and_leave_the_callers_rng_alone(name):
    torch.manual_seed(1)
    first = create_backbone(name).state_dict()
    after_first = torch.rand(3)
    torch.manual_seed(2)  # another caller state: the preset's weights must not depend on it
    second = create_backbone(name).state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(1)
    torch.rand(0)
    assert torch.equal(torch.rand(3), after_first)  # building the preset drew nothing from the caller's RNG


def test_tiny_cnn_is_a_real_timm_resnet_with_batchnorm():
    from timm.models.resnet import ResNet

    backbone = create_backbone("tiny-cnn")
    assert isinstance(backbone.body, ResNet)
    assert len(backbone.norm_layers()) == 3 + 4 * 2 + 3  # deep stem + 2 per block + 3 downsample BNs
    assert backbone.body.conv1[0].out_channels == 4


def test_uiqa_has_three_swin_branches():
    from timm.models.swin_transformer import SwinTransformer

    backbone = create_backbone("tiny-uiqa")
    branches = backbone.extractor_modules()
    assert len(branches) == 3 and all(isinstance(b, SwinTransformer) for b in branches)
    per_branch = len([m for m in branches[0].modules() if isinstance(m, nn.LayerNorm)])
    assert len(backbone.norm_layers()) == 3 * per_branch


def test_grid_fragments_take_cell_centre_patches():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    # 2 x 2 grid of 4 x 4 cells, 2 x 2 patch at each cell centre: rows 1-2 / 5-6, cols 1-2 / 5-6
    expected = torch.tensor([[9, 10, 13, 14], [17, 18, 21, 22], [41, 42, 45, 46], [49, 50, 53, 54]], dtype=torch.float32)
    assert torch.equal(grid_fragments(x, grid=2, patch=2)[0, 0], expected)
    assert grid_fragments(torch.rand(2, 3, 10, 12), grid=4, patch=8).shape == (2, 3, 32, 32)  # upsampled first


def test_centre_crop():
    x = torch.arange(30.0).view(1, 1, 5, 6)
    assert torch.equal(centre_crop(x, 3)[0, 0], torch.tensor([[7.0, 8, 9], [13, 14, 15], [19, 20, 21]]))


def test_wrap_module_excludes_regressor_norms_and_rejects_norm_free_modules():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(4), nn.LayerNorm(4), nn.Linear(4, 1))
    regressor = nn.Sequential(net[4], net[5])

    def feats(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module[3](module[2](module[1](module[0](x))))

    backbone = wrap_module(net, feats, regressor)
    backbone(torch.rand(2, 3, 8, 8))  # materialise the lazy layer
    assert backbone.norm_layers() == [net[1]]
    with pytest.raises(ValueError, match="Sequential has no BatchNorm/LayerNorm/GroupNorm outside its regressor"):
        wrap_module(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), lambda m, x: x, nn.Linear(2, 1))


def test_wrap_module_checks_feature_and_score_shapes():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    backbone = wrap_module(net, lambda m, x: m(x), nn.Linear(4, 1))  # forgot to pool
    with pytest.raises(ValueError, match="feature_fn must return pooled features \\(B, D\\)"):
        backbone(torch.rand(2, 3, 8, 8))
    pooled = wrap_module(net, lambda m, x: m(x).mean(dim=(2, 3)), nn.Linear(4, 10))  # a 10-bin distribution
    with pytest.raises(ValueError, match="one score per image, \\(B,\\) or \\(B, 1\\); got \\(2, 10\\)"):
        pooled(torch.rand(2, 3, 8, 8))


class CropNet(nn.Module):
    """Shaped like pyiqa's TReS at test time: n crops per image, regressor called on the image and
    on its flip, output = mean over crops of the first call."""

    def __init__(self, n_crops: int = 3) -> None:
        super().__init__()
        self.n_crops = n_crops
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        crops = torch.cat([x[..., i:i + 8, i:i + 8] for i in range(self.n_crops)])  # (n*B, 3, 8, 8), crop-major
        crops = crops.view(self.n_crops, x.shape[0], 3, 8, 8).transpose(0, 1).reshape(-1, 3, 8, 8)  # image-major
        pooled = self.bn(self.conv(crops)).mean(dim=(2, 3))
        score = self.fc(pooled)
        self.fc(self.bn(self.conv(crops.flip(3))).mean(dim=(2, 3)))  # flipped pass, as TReS does
        return score.view(x.shape[0], self.n_crops).mean(dim=1, keepdim=True)


def test_hooked_features_reproduce_the_nets_own_score():
    torch.manual_seed(0)
    net = CropNet().eval()
    backbone = wrap_module(net, HookedFeatures("fc"), net.fc)
    x = torch.rand(4, 3, 12, 12)
    features, scores = backbone(x)
    assert features.shape == (4, 6)
    assert torch.allclose(scores, net(x).squeeze(1), atol=1e-6)  # linear regressor commutes with the crop mean
    assert backbone.norm_layers() == [net.bn]


def test_pyiqa_is_optional_with_a_licence_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # as if not installed, even where it is
    with pytest.raises(ImportError, match=r"rayiqa\[pyiqa\].*PolyForm Noncommercial"):
        load_pyiqa_backbone("tres")
    with pytest.raises(ValueError, match="unknown pyiqa backbone 'hyperiqa'"):
        load_pyiqa_backbone("hyperiqa")
    assert set(PYIQA_REGRESSORS) == {"musiq", "musiq-paq2piq", "tres", "tres-flive", "metaiqa"}


def test_registry_names_and_unknown_name():
    assert set(backbone_names()) >= {"tiny-cnn", "tiny-vit", "tiny-uiqa", "uiqa-swin-t", "musiq", "tres", "metaiqa"}
    with pytest.raises(ValueError, match="unknown backbone 'resnet'; choose one of"):
        create_backbone("resnet")
