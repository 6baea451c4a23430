"""The trained part of the fit: FSAF's neck and head in a `channels`-wide subspace of their 256 channels,
and its embedding into the official checkpoint layout (zeros elsewhere; see train.py's docstring)."""
import math

import torch
from torch import nn
from torch.nn import functional as F

from .errors import FitError
from .model import ConvWithBias

BACKBONE_CHANNELS = (512, 1024, 2048)


class ThinNeckHead(nn.Module):
    """model.FPN + model.FSAFHead with `channels` channels instead of 256; the same parameter names."""

    def __init__(self, channels, num_classes, stacked_convs=4):
        super().__init__()
        self.channels = channels
        self.lateral_convs = nn.ModuleList(ConvWithBias(c, channels, 1) for c in BACKBONE_CHANNELS)
        fpn = [ConvWithBias(channels, channels, 3, padding=1) for _ in BACKBONE_CHANNELS]
        fpn.append(ConvWithBias(BACKBONE_CHANNELS[-1], channels, 3, stride=2, padding=1))
        fpn.append(ConvWithBias(channels, channels, 3, stride=2, padding=1))
        self.fpn_convs = nn.ModuleList(fpn)
        self.cls_convs = nn.ModuleList(ConvWithBias(channels, channels, 3, padding=1) for _ in range(stacked_convs))
        self.reg_convs = nn.ModuleList(ConvWithBias(channels, channels, 3, padding=1) for _ in range(stacked_convs))
        self.retina_cls = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(channels, 4, 3, padding=1)

    def init_weights(self, generator):
        """FPN: Xavier-uniform; towers: He-normal (keeps the signal through four narrow layers where
        mmdetection's Normal(0, 0.01) at 64 channels would shrink it ~4x per layer); retina_cls /
        retina_reg: Normal(0, 0.01), biases -log(99) and 0.25 (mmdetection's)."""
        with torch.no_grad():
            for name, module in self.named_modules():
                if not isinstance(module, nn.Conv2d):
                    continue
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                if name.startswith(("lateral_convs", "fpn_convs")):
                    bound = math.sqrt(6.0 / (fan_in + fan_out))
                    weight = (torch.rand(module.weight.shape, generator=generator) * 2 - 1) * bound
                elif name.startswith(("cls_convs", "reg_convs")):
                    weight = torch.randn(module.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in)
                else:
                    weight = torch.randn(module.weight.shape, generator=generator) * 0.01
                module.weight.copy_(weight)
                module.bias.zero_()
            self.retina_cls.bias.fill_(-math.log(99.0))
            self.retina_reg.bias.fill_(0.25)

    def forward(self, c3, c4, c5):
        inputs = (c3, c4, c5)
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            finer_hw = (int(laterals[i - 1].shape[2]), int(laterals[i - 1].shape[3]))
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=finer_hw, mode="nearest")
        feats = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        p6 = self.fpn_convs[len(laterals)](c5)
        feats += [p6, self.fpn_convs[len(laterals) + 1](p6)]
        cls_scores, bbox_preds = [], []
        for feat in feats:
            cls_feat, reg_feat = feat, feat
            for conv in self.cls_convs:
                cls_feat = F.relu(conv(cls_feat))
            for conv in self.reg_convs:
                reg_feat = F.relu(conv(reg_feat))
            cls_scores.append(self.retina_cls(cls_feat))
            bbox_preds.append(F.relu(self.retina_reg(reg_feat)))
        return cls_scores, bbox_preds


def _full_key(thin_key):
    return ("bbox_head." if thin_key.startswith(("cls_convs", "reg_convs", "retina_")) else "neck.") + thin_key


def embed_thin_state_dict(full_state_dict, thin):
    """A copy of `full_state_dict` whose neck and head hold `thin`'s weights, zeros elsewhere.

    Output channels beyond `thin.channels` get zero weights and biases (so they stay 0 through the
    FPN's sums and the towers' ReLUs); input channels beyond it get zero weights (they read zeros).
    """
    out = dict(full_state_dict)
    for key, value in thin.state_dict().items():
        full_key = _full_key(key)
        if full_key not in out:
            raise FitError(f"thin network key {key} has no place in the checkpoint layout")
        target = torch.zeros_like(out[full_key])
        index = tuple(slice(0, size) for size in value.shape)
        target[index] = value.detach()
        out[full_key] = target
    return out
