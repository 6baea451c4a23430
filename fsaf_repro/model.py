"""FSAF R50-FPN in plain PyTorch, laid out so mmdetection's checkpoint loads strictly.

The architecture follows mmdetection 2.15's `configs/fsaf/fsaf_r50_fpn_1x_coco.py` (the recipe's model):
ResNet-50 ('pytorch' style, stride on the 3x3 conv) -> FPN (start level 1, extra convs on C5,
5 outputs) -> FSAF head (a RetinaHead with one anchor per location and a ReLU on the box branch).
Module names mirror mmdetection's (`backbone`, `neck.lateral_convs.0.conv`, `bbox_head.retina_cls`,
...) so that `state_dict()` keys are exactly the checkpoint's keys.

`FSAFDetector.forward` returns the raw head outputs, as mmdetection's `bbox_head(neck(backbone(x)))`
does: per level, classification logits [B, 80, H, W] and box distances [B, 4, H, W]. Turning them
into detections is `fsaf_repro.decode`.
"""
from torch import nn
from torch.nn import functional as F

from .spec import model_constants
from .torch_threads import note_forward

RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET50_PLANES = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4


class Bottleneck(nn.Module):
    """ResNet bottleneck, 'pytorch' style: the stride sits on conv2 (the 3x3)."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * BOTTLENECK_EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * BOTTLENECK_EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 returning C3, C4, C5 (the inputs of FPN with start_level=1)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip(RESNET50_PLANES, RESNET50_BLOCKS)):
            stride = 1 if index == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * BOTTLENECK_EXPANSION, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * BOTTLENECK_EXPANSION),
            )
            layers = [Bottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * BOTTLENECK_EXPANSION
            layers.extend(Bottleneck(inplanes, planes) for _ in range(1, blocks))
            setattr(self, f"layer{index + 1}", nn.Sequential(*layers))

    def forward(self, x):
        # Every path to the detector's convolutions passes here (full model, export traces, the
        # calibration): the thread-count guard learns the count at which oneDNN builds them.
        note_forward()
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c3, c4, c5


class ConvWithBias(nn.Module):
    """A conv with bias wrapped as `<name>.conv`, the key layout of mmcv's ConvModule without norm/act."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)

    def forward(self, x):
        return self.conv(x)


class FPN(nn.Module):
    """FPN, 256 channels, start_level=1, add_extra_convs='on_input', 5 outputs, no norm, no activation."""

    def __init__(self, in_channels=(512, 1024, 2048), out_channels=256):
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvWithBias(c, out_channels, 1) for c in in_channels)
        fpn_convs = [ConvWithBias(out_channels, out_channels, 3, padding=1) for _ in in_channels]
        # P6 from C5 itself ('on_input'), P7 from P6 without a ReLU in between.
        fpn_convs.append(ConvWithBias(in_channels[-1], out_channels, 3, stride=2, padding=1))
        fpn_convs.append(ConvWithBias(out_channels, out_channels, 3, stride=2, padding=1))
        self.fpn_convs = nn.ModuleList(fpn_convs)

    def forward(self, inputs):
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            # Upsample to the exact size of the finer level (odd sizes do not double exactly). The
            # size is taken as Python ints so a traced graph gets constant shapes (the input size
            # is fixed per export), which ONNX shape inference and ATC can propagate.
            finer_hw = (int(laterals[i - 1].shape[2]), int(laterals[i - 1].shape[3]))
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=finer_hw, mode="nearest")
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        p6 = self.fpn_convs[len(laterals)](inputs[-1])
        p7 = self.fpn_convs[len(laterals) + 1](p6)
        return outs + [p6, p7]


class FSAFHead(nn.Module):
    """RetinaHead with one anchor per location, shared over levels; box distances through a ReLU."""

    def __init__(self, num_classes=80, in_channels=256, stacked_convs=4):
        super().__init__()
        self.num_classes = num_classes
        self.cls_convs = nn.ModuleList(
            ConvWithBias(in_channels, in_channels, 3, padding=1) for _ in range(stacked_convs))
        self.reg_convs = nn.ModuleList(
            ConvWithBias(in_channels, in_channels, 3, padding=1) for _ in range(stacked_convs))
        self.retina_cls = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(in_channels, 4, 3, padding=1)

    def forward_single(self, x):
        cls_feat = x
        reg_feat = x
        for conv in self.cls_convs:
            cls_feat = F.relu(conv(cls_feat))
        for conv in self.reg_convs:
            reg_feat = F.relu(conv(reg_feat))
        cls_score = self.retina_cls(cls_feat)
        # FSAF predicts (top, bottom, left, right) distances, which must be non-negative.
        bbox_pred = F.relu(self.retina_reg(reg_feat))
        return cls_score, bbox_pred

    def forward(self, feats):
        cls_scores = []
        bbox_preds = []
        for feat in feats:
            cls_score, bbox_pred = self.forward_single(feat)
            cls_scores.append(cls_score)
            bbox_preds.append(bbox_pred)
        return cls_scores, bbox_preds


class FSAFDetector(nn.Module):
    """backbone -> neck -> bbox_head; forward returns (cls_scores, bbox_preds), one tensor per level."""

    def __init__(self, num_classes=None):
        super().__init__()
        constants = model_constants()
        if num_classes is None:
            num_classes = constants["num_classes"]
        self.backbone = ResNet50()
        self.neck = FPN(out_channels=constants["fpn_channels"])
        self.bbox_head = FSAFHead(num_classes=num_classes, in_channels=constants["fpn_channels"])

    def extract_feat(self, img):
        return self.neck(self.backbone(img))

    def forward(self, img):
        return self.bbox_head(self.extract_feat(img))


def build_detector() -> FSAFDetector:
    """A fresh FSAFDetector in eval mode (BN uses running statistics, as at test time)."""
    return FSAFDetector().eval()
