"""IR-ResNet trunks: the ResNet of face recognition (ArcFace, Deng et al. CVPR 2019, "IR" units).

Written here from the paper's description (timm has no such trunk; no pretrained weights are
needed): a 3x3 stride-1 stem (conv - BN - PReLU), then four stages of 64 / 128 / 256 / 512
channels whose first unit halves the resolution, so a 112-px face keeps a 7x7 final map (an
ImageNet ResNet's stride-2 stem and max-pool leave 4x4). Each *improved residual unit* is
BN - Conv3x3 - BN - PReLU - Conv3x3 (the stride here) - BN, added to the input, or to a
1x1-conv + BN projection of it when the shape changes; no activation after the addition.

Depths: ``iresnet18`` (2,2,2,2), ``iresnet34`` (3,4,6,3), ``iresnet50`` (3,4,14,3),
``iresnet100`` (3,13,30,3). Importing this module registers the four names in timm's model
registry, so ``timm.create_model("iresnet50", num_classes=0)`` builds one like any timm trunk:
``forward_features`` gives the [B, 512, H/16, W/16] map (``backbone.model``'s ``pooling="flatten"``
head turns it into the BN-Dropout-FC-BN embedding of the paper), ``forward`` the average-pooled
512-d vector (and a linear classifier when ``num_classes > 0``).
"""

from __future__ import annotations

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

WIDTHS = (64, 128, 256, 512)
DEPTHS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3),
          "iresnet100": (3, 13, 30, 3)}
BN_EPS = 1e-5


class ImprovedResidualUnit(nn.Module):
    """BN - Conv3x3 - BN - PReLU - Conv3x3(stride) - BN, plus the input (projected when the shape changes)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.BatchNorm2d(in_channels, eps=BN_EPS),
            nn.Conv2d(in_channels, channels, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(channels, eps=BN_EPS),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(channels, eps=BN_EPS),
        )
        if stride == 1 and in_channels == channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(channels, eps=BN_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.shortcut(x)


class IResNet(nn.Module):
    """Stem + four stages of improved residual units; the timm trunk interface (see the module docstring).

    Every BatchNorm starts at weight 1, as in ArcFace's IR nets: starting the last one of each residual
    branch at 0 (timm's ResNet default) trained iresnet18 far slower on 24 x 8 demo faces at 32 px (after
    10 epochs loss 3.0 against 0.1, rank-1 among 10 distractors 0.33 against 0.68)."""

    def __init__(self, depths: tuple[int, int, int, int], num_classes: int = 0, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes, self.num_features = num_classes, WIDTHS[-1]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, WIDTHS[0], 3, stride=1, padding=1, bias=False),
                                  nn.BatchNorm2d(WIDTHS[0], eps=BN_EPS), nn.PReLU(WIDTHS[0]))
        stages, channels = [], WIDTHS[0]
        for width, depth in zip(WIDTHS, depths, strict=True):
            units = [ImprovedResidualUnit(channels, width, stride=2)]
            units += [ImprovedResidualUnit(width, width, stride=1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*units))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] images -> the [B, 512, H/16, W/16] final feature map."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# No weights (url ''): trunks to train. Inputs are 112-px faces scaled to [-1, 1], as FaceEmbedder takes them.
_CFG = {"url": "", "num_classes": 0, "input_size": (3, 112, 112), "pool_size": (7, 7), "crop_pct": 1.0,
        "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
        "first_conv": "stem.0", "classifier": "fc"}
default_cfgs = generate_default_cfgs({name: dict(_CFG) for name in DEPTHS})  # read by timm's register_model


def _create(variant: str, pretrained: bool, **kwargs) -> IResNet:
    if pretrained:
        raise RuntimeError(f"{variant}: no pretrained weights exist for semiface's IR-ResNets; use pretrained=False")
    return build_model_with_cfg(IResNet, variant, pretrained, depths=DEPTHS[variant], **kwargs)


@register_model
def iresnet18(pretrained: bool = False, **kwargs) -> IResNet:
    """IR-ResNet-18 (2, 2, 2, 2 units)."""
    return _create("iresnet18", pretrained, **kwargs)


@register_model
def iresnet34(pretrained: bool = False, **kwargs) -> IResNet:
    """IR-ResNet-34 (3, 4, 6, 3 units)."""
    return _create("iresnet34", pretrained, **kwargs)


@register_model
def iresnet50(pretrained: bool = False, **kwargs) -> IResNet:
    """IR-ResNet-50 (3, 4, 14, 3 units): the IR-50 of ArcFace and the clustering papers' features."""
    return _create("iresnet50", pretrained, **kwargs)


@register_model
def iresnet100(pretrained: bool = False, **kwargs) -> IResNet:
    """IR-ResNet-100 (3, 13, 30, 3 units)."""
    return _create("iresnet100", pretrained, **kwargs)
