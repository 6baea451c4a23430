"""The detector's math (mmdetection 2.15's FSAF R50-FPN) checked against direct computations of the formulas."""
import copy

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fsaf_repro import decode
from fsaf_repro.export import num_candidates
from fsaf_repro.spec import model_constants

from tests.support import UNIT_INPUT_HW, generated_inputs


@pytest.fixture(scope="module")
def unit_outputs(seeded_detector):
    height, width = UNIT_INPUT_HW
    images = generated_inputs(21, 2, height, width)
    with torch.no_grad():
        feats = seeded_detector.backbone(images)
        pyramid = seeded_detector.neck(feats)
        cls_scores, bbox_preds = seeded_detector.bbox_head(pyramid)
    return images, feats, pyramid, cls_scores, bbox_preds


def test_level_sizes_follow_the_strides(unit_outputs):
    height, width = UNIT_INPUT_HW
    _, feats, pyramid, cls_scores, bbox_preds = unit_outputs
    assert [f.shape[1] for f in feats] == [512, 1024, 2048]
    expected = []
    h, w = -(-height // 4), -(-width // 4)
    for _ in model_constants()["strides"]:
        h, w = -(-h // 2), -(-w // 2)
        expected.append((h, w))
    assert [tuple(p.shape[2:]) for p in pyramid] == expected
    assert all(c.shape[1] == 80 for c in cls_scores) and all(b.shape[1] == 4 for b in bbox_preds)


def test_full_size_levels_and_candidate_count():
    # 800x1216: 100x152, 50x76, 25x38, 13x19, 7x10 (strides 8-128); top-1000 on the two largest.
    assert num_candidates(800, 1216) == 1000 + 1000 + 25 * 38 + 13 * 19 + 7 * 10


def test_fpn_extra_levels_come_from_c5_and_p6_without_relu(seeded_detector, unit_outputs):
    _, feats, pyramid, _, _ = unit_outputs
    neck = seeded_detector.neck
    with torch.no_grad():
        p6 = F.conv2d(feats[2], neck.fpn_convs[3].conv.weight, neck.fpn_convs[3].conv.bias, stride=2, padding=1)
        p7 = F.conv2d(p6, neck.fpn_convs[4].conv.weight, neck.fpn_convs[4].conv.bias, stride=2, padding=1)
    assert torch.allclose(pyramid[3], p6, atol=1e-5)
    assert torch.allclose(pyramid[4], p7, atol=1e-5)
    assert float(p6.min()) < 0  # no ReLU anywhere in the neck


def test_fpn_top_down_uses_nearest_upsampling_to_the_exact_size(seeded_detector):
    neck = seeded_detector.neck
    # Odd sizes: C4 is 7x5, C3 13x9; upsampling must land on 13x9, not 14x10.
    feats = [torch.randn(1, 512, 13, 9), torch.randn(1, 1024, 7, 5), torch.randn(1, 2048, 4, 3)]
    with torch.no_grad():
        lat = [conv(f) for conv, f in zip(neck.lateral_convs, feats)]
        lat1 = lat[1] + F.interpolate(lat[2], size=(7, 5), mode="nearest")
        lat0 = lat[0] + F.interpolate(lat1, size=(13, 9), mode="nearest")
        p3 = neck.fpn_convs[0](lat0)
        out = neck(feats)
    assert out[0].shape == (1, 256, 13, 9)
    assert torch.allclose(out[0], p3, atol=1e-5)


def test_box_branch_is_relu_clamped(seeded_detector, unit_outputs):
    _, _, pyramid, _, bbox_preds = unit_outputs
    assert float(torch.cat([b.flatten() for b in bbox_preds]).min()) >= 0.0
    head = copy.deepcopy(seeded_detector.bbox_head)
    with torch.no_grad():
        head.retina_reg.bias.sub_(0.3)  # push some distances negative before FSAF's ReLU
        _, bbox_pred = head.forward_single(pyramid[0])
        reg_feat = pyramid[0]
        for conv in head.reg_convs:
            reg_feat = F.relu(conv(reg_feat))
        pre_activation = head.retina_reg(reg_feat)
    assert float(pre_activation.min()) < 0
    assert torch.equal(bbox_pred, pre_activation.clamp(min=0))


def test_anchors_match_the_formula():
    stride = 16
    anchors = decode.level_anchors(3, 4, stride).numpy()
    expected = [[j * stride - 8, i * stride - 8, j * stride + 8, i * stride + 8]
                for i in range(3) for j in range(4)]
    assert np.array_equal(anchors, np.array(expected, dtype=np.float32))


def test_tblr_decode_matches_the_formula_and_clips():
    stride = 8.0
    anchors = torch.tensor([[-4.0, -4.0, 4.0, 4.0], [36.0, 12.0, 44.0, 20.0]])
    distances = torch.tensor([[0.5, 0.25, 1.0, 2.0], [0.1, 1.0, 0.3, 0.4]])
    boxes = decode.tblr_decode(anchors, distances, (30, 50)).numpy()
    cx, cy = np.array([0.0, 40.0]), np.array([0.0, 16.0])
    top, bottom, left, right = distances.numpy().T
    x1 = np.clip(cx - 4 * stride * left, 0, 50)
    y1 = np.clip(cy - 4 * stride * top, 0, 30)
    x2 = np.clip(cx + 4 * stride * right, 0, 50)
    y2 = np.clip(cy + 4 * stride * bottom, 0, 30)
    assert np.allclose(boxes, np.stack([x1, y1, x2, y2], axis=1), atol=1e-6)
    assert boxes[1, 2] == 50.0 and boxes[1, 3] == 30.0  # clipped to W and H
    assert boxes[0, 0] == 0.0 and boxes[0, 1] == 0.0  # clipped at 0


def test_select_candidates_keeps_the_top_k_by_best_class_score():
    torch.manual_seed(0)
    # One level of 40x30 = 1200 locations (> 1000) and one of 10x10 = 100 (kept whole, in order).
    cls_scores = [torch.randn(1, 80, 30, 40), torch.randn(1, 80, 10, 10)]
    bbox_preds = [torch.rand(1, 4, 30, 40), torch.rand(1, 4, 10, 10)]
    boxes, scores = decode.select_candidates(cls_scores, bbox_preds, (240, 320), strides=[8, 16], nms_pre=1000)
    assert boxes.shape == (1, 1100, 4) and scores.shape == (1, 1100, 80)
    level0 = cls_scores[0].sigmoid().permute(0, 2, 3, 1).reshape(-1, 80)
    best = level0.max(dim=1)[0]
    top = torch.sort(best, descending=True)[0][:1000]
    assert torch.equal(scores[0, :1000].max(dim=1)[0], top)
    level1 = cls_scores[1].sigmoid().permute(0, 2, 3, 1).reshape(-1, 80)
    assert torch.equal(scores[0, 1000:], level1)


def _reference_multiclass_nms(boxes, scores, score_thr, iou_thr, max_num):
    """Straightforward per-class greedy NMS, then the top `max_num` of the union (independent code)."""
    kept = []
    for c in range(scores.shape[1]):
        idx = [i for i in range(len(boxes)) if scores[i, c] > score_thr]
        idx.sort(key=lambda i: -scores[i, c])
        alive = list(idx)
        while alive:
            i = alive.pop(0)
            kept.append((scores[i, c], i, c))
            survivors = []
            for j in alive:
                xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
                xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
                inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
                area_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
                area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
                if not inter / (area_i + area_j - inter) > iou_thr:
                    survivors.append(j)
            alive = survivors
    kept.sort(key=lambda item: -item[0])
    return kept[:max_num]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_nms_matches_an_independent_per_class_implementation(seed):
    rng = np.random.RandomState(seed)
    n, c = 150, 6
    xy = rng.uniform(0, 200, size=(n, 2))
    wh = rng.uniform(5, 60, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    # Clusters of near-duplicates so that suppression really happens.
    boxes[50:100] = boxes[:50] + rng.uniform(-2, 2, size=(50, 4)).astype(np.float32)
    scores = rng.uniform(0, 0.5, size=(n, c)).astype(np.float32)
    dets, labels = decode.multiclass_nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.05, 0.5, 100)
    expected = _reference_multiclass_nms(boxes.astype(np.float64), scores, 0.05, 0.5, 100)
    assert len(dets) == len(expected) == 100
    assert [int(label) for label in labels] == [e[2] for e in expected]
    assert np.array_equal(dets[:, :4], boxes[[e[1] for e in expected]])
    assert np.array_equal(dets[:, 4], np.array([e[0] for e in expected], dtype=np.float32))


def test_multiclass_nms_threshold_is_strict_and_a_box_can_carry_several_classes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 120.0, 120.0]])
    scores = torch.zeros(2, 80)
    scores[0, 3] = 0.9
    scores[0, 7] = 0.6  # same box, second class: kept, NMS is per class
    scores[1, 3] = 0.05  # exactly the threshold: not a candidate (score > 0.05)
    dets, labels = decode.multiclass_nms(boxes, scores)
    assert labels.tolist() == [3, 7]
    assert np.allclose(dets[:, 4], [0.9, 0.6])


def test_no_candidates_gives_empty_padded_output():
    dets, labels = decode.host_nms(np.zeros((2, 10, 4), np.float32), np.zeros((2, 10, 80), np.float32))
    assert dets.shape == (2, 100, 5) and labels.shape == (2, 100)
    assert not dets.any() and not labels.any()


def test_detect_on_seeded_weights_fills_the_output(unit_outputs):
    height, width = UNIT_INPUT_HW
    _, _, _, cls_scores, bbox_preds = unit_outputs
    dets, labels = decode.detect(cls_scores, bbox_preds, (height, width))
    assert dets.shape == (2, 100, 5) and labels.dtype == np.int64
    for image in range(2):
        scores = dets[image, :, 4]
        assert (scores > 0.05).all()  # 100 real detections per image
        assert np.all(np.diff(scores) <= 0)  # sorted by score
        assert (dets[image, :, [0, 2]] <= width).all() and (dets[image, :, [1, 3]] <= height).all()
        assert (dets[image, :, :4] >= 0).all()
        assert len(set(labels[image].tolist())) > 1
