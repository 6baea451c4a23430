"""Parity with mmdetection's own FSAF (config fsaf_r50_fpn_1x_coco, the same weights).

Needs mmdetection importable: `scripts/install_mmdet.sh` adds mmcv-full (built with its ops, CPU) and
mmdet, at the versions constraints/recipe-py37.txt names, to the recipe stack's .venv37 (.ci/run does
this and runs this file there); the NPU image built with --build-arg WITH_MMDET=1 has the recipe's
commits instead. The config is FSAF_MMDET_CONFIG, else the one mmdetection ships (`<package>/.mim/configs`
in a wheel, `configs/` beside an editable install).

One case per checkpoint of CHECKPOINTS, on one 800x1216 input: the raw head outputs agree within
parity.raw_head_abs_tol, and mmdetection's own test-time path (the detector's forward with
return_loss=False, no rescale: its post-processing and mmcv's compiled NMS) gives the same detections as
fsaf_repro's within the fp32 parity tolerances.
"""
import os
import sys

import numpy as np
import pytest
import torch

from fsaf_repro.checkpoint import load_detector
from fsaf_repro.decode import detect, pad_detections
from fsaf_repro.parity import compare_detections, within_tolerances
from fsaf_repro.spec import input_constants, load_recipe_spec, parity_tolerances

from tests.acceptance.conftest import ENV_OF, write_json
from tests.support import generated_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join("fsaf", "fsaf_r50_fpn_1x_coco.py")
INSTALL_SCRIPT = os.path.join("scripts", "install_mmdet.sh")

# The checkpoints compared, one test case each: "generated" (seeded weights in the official layout; runs
# on any host), "fitted" (weights trained on generated shapes by a short fit: confident scores, trained
# neck and head; runs on any host), "official" (FSAF_CHECKPOINT; skips without it), or the path of a
# .pth file in the official layout, relative to the repository root, as one more entry here. .ci/run
# runs every case but "official".
CHECKPOINTS = ("generated", "fitted", "official")


def install_command():
    """The exact command that makes mmdetection importable, said for the Python running this test."""
    pins = load_recipe_spec()["pins"]
    on_recipe_stack = ("{}.{}".format(*sys.version_info[:2]) == pins["python"]
                       and torch.__version__.split("+")[0] == pins["torch"])
    in_venv = getattr(sys, "base_prefix", sys.prefix) != sys.prefix
    venv = os.path.relpath(sys.prefix, ROOT) if in_venv else None
    if venv is not None and venv.startswith(os.pardir):
        venv = sys.prefix
    if not on_recipe_stack or venv is None:
        # mmcv-full 1.3.10 builds and mmdet 2.15.1 runs on the recipe's stack only.
        this_test = os.path.relpath(__file__, ROOT)
        return (f"mmdetection runs on the recipe stack (Python {pins['python']}, torch {pins['torch']}): run "
                f"`bash scripts/bootstrap.sh recipe && bash {INSTALL_SCRIPT} .venv37`, then "
                f"`.venv37/bin/python -m pytest {this_test}`")
    return (f"run `bash {INSTALL_SCRIPT} {venv}` (mmcv-full with ops and mmdet at the pins of "
            "constraints/recipe-py37.txt)")


def checkpoint_path(entry, checkpoint_of):
    if entry in ("generated", "fitted", "official"):
        return checkpoint_of(entry)
    path = os.path.join(ROOT, entry)
    if not os.path.isfile(path):
        pytest.fail(f"{path} (listed in CHECKPOINTS of {os.path.basename(__file__)}) is not a file")
    return path


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


def per_class_to_rows(per_class):
    """mmdetection's per-class result (one [k, 5] array per class) -> (dets [n, 5], labels [n]), best first."""
    dets = np.concatenate([np.asarray(rows, np.float32).reshape(-1, 5) for rows in per_class], axis=0)
    labels = np.concatenate([np.full(len(rows), label, np.int64) for label, rows in enumerate(per_class)])
    order = np.argsort(-dets[:, 4], kind="stable")
    return dets[order], labels[order]


@pytest.mark.parametrize("checkpoint_entry", CHECKPOINTS)
def test_same_head_outputs_and_detections_as_mmdetection(settings, run_dir, request, checkpoint_entry):
    try:
        import mmdet
        from mmdet.apis import init_detector
    except ImportError as exc:  # no mmdet, or mmdet without a working mmcv-full (its compiled ops)
        pytest.skip(f"mmdetection is not importable ({exc}): {install_command()}")
    # Fetched only now: without mmdetection the skip costs nothing (the seeded weights are calibrated).
    checkpoint = checkpoint_path(checkpoint_entry, request.getfixturevalue("checkpoint_of"))
    config = mmdet_config(settings, mmdet)
    inp = input_constants()
    height, width = inp["height"], inp["width"]
    images = generated_inputs(41, 1, height, width)
    theirs = init_detector(config, checkpoint, device="cpu").eval()
    ours = load_detector(checkpoint)
    img_metas = [{"img_shape": (height, width, 3), "ori_shape": (height, width, 3),
                  "pad_shape": (height, width, 3), "scale_factor": np.ones(4, dtype=np.float32), "flip": False}]
    with torch.no_grad():
        their_cls, their_reg = theirs.bbox_head(theirs.extract_feat(images))
        our_cls, our_reg = ours(images)
        # mmdetection's test-time entry point (what its tools/test.py and inference_detector call).
        their_result = theirs(return_loss=False, rescale=False, img=[images], img_metas=[img_metas])
    assert len(their_cls) == len(our_cls) and all(a.shape == b.shape for a, b in zip(their_cls, our_cls))
    head_diff = max(float((a - b).abs().max()) for a, b in zip(list(their_cls) + list(their_reg),
                                                              list(our_cls) + list(our_reg)))
    dets, labels = detect(our_cls, our_reg, (height, width))
    their_dets, their_labels = per_class_to_rows(their_result[0])
    padded_dets, padded_labels = pad_detections(their_dets, their_labels)
    record = compare_detections(padded_dets[None], padded_labels[None], dets, labels)
    record.update(checkpoint=checkpoint_entry, checkpoint_path=checkpoint, config=config,
                  mmdet_version=mmdet.__version__, head_max_abs_diff=head_diff,
                  raw_head_abs_tol=parity_tolerances()["raw_head_abs_tol"], input_hw=[height, width])
    checkpoint_stem = os.path.splitext(os.path.basename(checkpoint_entry))[0]
    write_json(os.path.join(run_dir, "parity", f"mmdetection_{checkpoint_stem}.json"), record)
    print(f"mmdetection parity {checkpoint_entry}: {record}")
    assert head_diff <= parity_tolerances()["raw_head_abs_tol"], record
    assert record["detections_ref"] > 0, "mmdetection detected nothing: the comparison would be vacuous"
    assert within_tolerances(record), record
