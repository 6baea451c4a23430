"""Stage parity: the exported graphs give the torch path's detections.

- ONNX Runtime (fp32) against the torch path within the spec's parity tolerances (box_abs_tol_px,
  score_abs_tol): runs on any host. The generated case is one 800x1216 image through the onnx-nms flavour
  and two reduced-size images through the raw flavour; the official case runs both at 800x1216. The
  execution provider is FSAF_ORT_PROVIDER's (default CPU).
- The om (fp16, ascend-nms flavour) against the torch path within the spec's fp16 tolerances
  (parity.fp16_om_*): needs an Ascend NPU, CANN's atc and an om backend (aclruntime by default).

Inputs are the first images of FSAF_COCO_ROOT's val2017 through the recipe's transform when it is given
and the official weights are used, else generated image-like inputs. Each comparison record is written
to <run dir>/parity/.
"""
import os

import numpy as np
import pytest

from fsaf_repro.backends import backend_availability, create_backend
from fsaf_repro.parity import compare_detections, fp16_agreement, within_tolerances
from fsaf_repro.spec import input_constants, parity_tolerances

from tests.acceptance.conftest import OM_BACKENDS, ORT_BACKEND_OF_PROVIDER, provide, val2017_paths, write_json
from tests.support import UNIT_INPUT_HW, generated_inputs

ORT_FLAVOURS = ("onnx-nms", "raw")


def network_inputs(settings, kind, count, height, width, seed):
    """`count` float32 NCHW inputs: COCO val2017 images (official weights, FSAF_COCO_ROOT given), else generated."""
    if kind == "official" and settings.coco_root:
        from fsaf_repro.data import CocoImageSet

        annotation_file, image_dir = val2017_paths(settings.coco_root)
        image_set = CocoImageSet(annotation_file, image_dir, limit=count, height=height, width=width)
        return np.stack([image_set.load(i)[0] for i in range(len(image_set))])
    return generated_inputs(seed, count, height, width).numpy()


def torch_outputs(checkpoint, batch):
    with create_backend("torch") as backend:
        backend.load(checkpoint)
        return backend.run(batch)


def ort_backend_name(settings):
    return ORT_BACKEND_OF_PROVIDER.get(settings.ort_provider or "CPUExecutionProvider", "onnxruntime")


@pytest.mark.parametrize("flavour", ORT_FLAVOURS)
def test_onnxruntime_matches_the_torch_path(settings, run_dir, onnx_export, checkpoint_of, checkpoint_kind, flavour):
    """Same detection count and labels per image; boxes and scores within the spec's fp32 tolerances
    (generated weights: onnx-nms on one 800x1216 input, raw on two reduced-size inputs)."""
    name = ort_backend_name(settings)
    availability = backend_availability(name)
    if not availability.ok:
        pytest.skip("{} unavailable: {} ({} to another provider)".format(name, availability.reason,
                                                                         provide("--ort-provider")))
    inp = input_constants()
    full = flavour == "onnx-nms" or checkpoint_kind == "official"
    height, width = (inp["height"], inp["width"]) if full else UNIT_INPUT_HW
    count = 1 if full else 2
    checkpoint = checkpoint_of(checkpoint_kind)
    path, _ = onnx_export(checkpoint, checkpoint_kind, flavour, height, width, None)
    batch = network_inputs(settings, checkpoint_kind, count, height, width, seed=11)
    reference = torch_outputs(checkpoint, batch)
    with create_backend(name, **settings.backend_options(name)) as backend:
        backend.load(path)
        outputs = backend.run(batch)
    record = compare_detections(reference["dets"], reference["labels"], outputs["dets"], outputs["labels"])
    record.update(checkpoint=checkpoint_kind, flavour=flavour, input_hw=[height, width], backend=name)
    write_json(os.path.join(run_dir, "parity", f"onnxruntime_{checkpoint_kind}_{flavour}.json"), record)
    assert record["detections_ref"] > 0, "the torch path detected nothing: the comparison would be vacuous"
    tolerances = parity_tolerances()
    assert record["counts_equal"] and record["labels_equal"], record
    assert record["max_box_abs_diff"] <= tolerances["box_abs_tol_px"], record
    assert record["max_score_abs_diff"] <= tolerances["score_abs_tol"], record
    assert within_tolerances(record)


def test_om_matches_the_torch_path(settings, run_dir, om_for, checkpoint_of, model_kind, batch_size):
    """At least fp16_om_min_match_rate of the torch path's detections are found in the om's output with the
    same label, within fp16_om_box_abs_tol_px and fp16_om_score_abs_tol."""
    if settings.backend not in OM_BACKENDS:
        pytest.skip("om parity runs an om: {} to aclruntime (or ais_bench, benchmark) on an Ascend host".format(
            provide("--backend")))
    availability = backend_availability(settings.backend)
    if not availability.ok:
        pytest.skip(f"backend {settings.backend} unavailable: {availability.reason}")
    om = om_for(model_kind, batch_size, "atc")
    inp = input_constants()
    distinct = min(batch_size, 4)
    images = network_inputs(settings, model_kind, distinct, inp["height"], inp["width"], seed=23)
    batch = np.stack([images[i % distinct] for i in range(batch_size)])
    reference = torch_outputs(checkpoint_of(model_kind), images)
    with create_backend(settings.backend, **settings.backend_options()) as backend:
        backend.load(om["path"])
        outputs = backend.run(batch)
    outputs = {k: v[:distinct] for k, v in outputs.items()}
    agreement = fp16_agreement(reference["dets"], reference["labels"], outputs["dets"], outputs["labels"])
    found, total = agreement["found"], agreement["total"]
    record = compare_detections(reference["dets"], reference["labels"], outputs["dets"], outputs["labels"])
    record.update(checkpoint=model_kind, om=om["path"], batch_size=batch_size, backend=settings.backend,
                  fp16_found=found, fp16_total=total)
    write_json(os.path.join(run_dir, "parity", f"om_{model_kind}_bs{batch_size}.json"), record)
    assert total > 0, "the torch path detected nothing: the comparison would be vacuous"
    assert found / float(total) >= parity_tolerances()["fp16_om_min_match_rate"], record
