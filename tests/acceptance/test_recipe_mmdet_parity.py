"""Parity with mmdetection's own FSAF (config fsaf_r50_fpn_1x_coco, the same weights).

Needs mmdetection importable (pip install mmdet==2.15.1 with mmcv-full, or the NPU image built with
--build-arg WITH_MMDET=1). The config is FSAF_MMDET_CONFIG, else the one mmdetection ships
(`<package>/.mim/configs` in a wheel, `configs/` beside an editable install). One 800x1216 input: the raw
head outputs agree within parity.raw_head_abs_tol and the detections (mmdetection's own post-processing,
no rescale) are the same as fsaf_repro's within the fp32 parity tolerances.
"""
import os

import numpy as np
import pytest
import torch

from fsaf_repro.checkpoint import load_detector
from fsaf_repro.decode import detect, pad_detections
from fsaf_repro.parity import compare_detections, within_tolerances
from fsaf_repro.spec import input_constants, parity_tolerances

from tests.acceptance.conftest import ENV_OF, write_json
from tests.support import generated_inputs

CONFIG = os.path.join("fsaf", "fsaf_r50_fpn_1x_coco.py")
INSTALL = ("install mmdetection's FSAF: pip install 'mmdet==2.15.1' mmcv-full (built with ops), or build the NPU "
           "image with --build-arg WITH_MMDET=1")


def mmdet_config(settings, mmdet):
    if settings.mmdet_config:
        if not os.path.isfile(settings.mmdet_config):
            pytest.fail("{}={} is not a file".format(ENV_OF["--mmdet-config"], settings.mmdet_config))
        return settings.mmdet_config
    package = os.path.dirname(os.path.abspath(mmdet.__file__))
    for candidate in (os.path.join(package, ".mim", "configs", CONFIG),
                      os.path.join(os.path.dirname(package), "configs", CONFIG)):
        if os.path.isfile(candidate):
            return candidate
    pytest.skip("mmdetection is installed without its configs: set {} (or pass --mmdet-config) to "
                "configs/{}".format(ENV_OF["--mmdet-config"], CONFIG))


def test_same_head_outputs_and_detections_as_mmdetection(settings, run_dir, checkpoint_of, model_kind):
    mmdet = pytest.importorskip("mmdet", reason=INSTALL)
    try:
        from mmdet.apis import init_detector
    except ImportError as exc:  # mmdet without a working mmcv-full
        pytest.skip("mmdet.apis is not importable ({}); {}".format(exc, INSTALL))
    checkpoint = checkpoint_of(model_kind)
    config = mmdet_config(settings, mmdet)
    inp = input_constants()
    height, width = inp["height"], inp["width"]
    images = generated_inputs(41, 1, height, width)
    theirs = init_detector(config, checkpoint, device="cpu").eval()
    ours = load_detector(checkpoint)
    with torch.no_grad():
        their_cls, their_reg = theirs.bbox_head(theirs.extract_feat(images))
        our_cls, our_reg = ours(images)
        img_metas = [{"img_shape": (height, width, 3), "ori_shape": (height, width, 3),
                      "pad_shape": (height, width, 3), "scale_factor": np.ones(4, dtype=np.float32)}]
        their_dets = theirs.bbox_head.get_bboxes(their_cls, their_reg, img_metas=img_metas, rescale=False)
    head_diff = max(float((a - b).abs().max()) for a, b in zip(list(their_cls) + list(their_reg),
                                                              list(our_cls) + list(our_reg)))
    dets, labels = detect(our_cls, our_reg, (height, width))
    their_boxes, their_labels = their_dets[0]
    padded_dets, padded_labels = pad_detections(their_boxes.numpy(), their_labels.numpy())
    record = compare_detections(padded_dets[None], padded_labels[None], dets, labels)
    record.update(checkpoint=model_kind, config=config, mmdet_version=mmdet.__version__, head_max_abs_diff=head_diff)
    write_json(os.path.join(run_dir, "parity", "mmdetection_{}.json".format(model_kind)), record)
    assert len(their_cls) == len(our_cls) and all(a.shape == b.shape for a, b in zip(their_cls, our_cls))
    assert head_diff <= parity_tolerances()["raw_head_abs_tol"], record
    assert record["detections_ref"] > 0, "mmdetection detected nothing: the comparison would be vacuous"
    assert within_tolerances(record), record
