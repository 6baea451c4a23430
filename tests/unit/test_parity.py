"""ONNX Runtime runs of the exported graphs give the torch path's detections (tolerances from the spec)."""
import numpy as np
import pytest
import torch

from fsaf_repro.decode import count_candidates, detect, host_nms
from fsaf_repro.parity import compare_detections, within_tolerances
from fsaf_repro.spec import input_constants, parity_tolerances

from tests.support import UNIT_INPUT_HW, generated_inputs

ort = pytest.importorskip("onnxruntime", reason="install onnxruntime (extra 'ort') for the parity tests")


def _torch_reference(detector, images, height, width):
    with torch.no_grad():
        cls_scores, bbox_preds = detector(images)
    candidates = count_candidates(cls_scores, bbox_preds, (height, width))
    dets, labels = detect(cls_scores, bbox_preds, (height, width))
    return dets, labels, candidates


def _ort_detections(path, flavour, feeds):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outputs = session.run(None, feeds)
    if flavour == "raw":
        return host_nms(outputs[0], outputs[1])
    return outputs[0], outputs[1]


def _assert_same_detections(ref_dets, ref_labels, dets, labels):
    record = compare_detections(ref_dets, ref_labels, dets, labels)
    tolerances = parity_tolerances()
    assert record["detections_ref"] == 100 * ref_dets.shape[0], "vacuous: the torch path found too few detections"
    assert record["counts_equal"], record
    assert record["labels_equal"], record
    assert record["max_box_abs_diff"] <= tolerances["box_abs_tol_px"], record
    assert record["max_score_abs_diff"] <= tolerances["score_abs_tol"], record
    assert within_tolerances(record)
    return record


@pytest.mark.parametrize("flavour", ["onnx-nms", "raw"])
def test_onnxruntime_matches_torch_at_reduced_size(export_cache, seeded_detector, flavour):
    height, width = UNIT_INPUT_HW
    images = generated_inputs(101, 3, height, width)
    ref_dets, ref_labels, candidates = _torch_reference(seeded_detector, images, height, width)
    assert min(candidates) >= 100, candidates
    path = export_cache(flavour, height, width, batch_size=None)
    dets, labels = _ort_detections(path, flavour, {"input": images.numpy()})
    _assert_same_detections(ref_dets, ref_labels, dets, labels)


@pytest.mark.slow
def test_onnxruntime_matches_torch_at_full_size(export_cache, seeded_detector):
    """The recipe's 800x1216 input, once: export, run, compare (a few seconds on 2 cores)."""
    height, width = input_constants()["height"], input_constants()["width"]
    images = generated_inputs(202, 1, height, width)
    ref_dets, ref_labels, candidates = _torch_reference(seeded_detector, images, height, width)
    assert min(candidates) >= 100, candidates
    path = export_cache("onnx-nms", height, width, batch_size=1)
    dets, labels = _ort_detections(path, "onnx-nms", {"input": images.numpy()})
    _assert_same_detections(ref_dets, ref_labels, dets, labels)


def test_parity_check_detects_a_real_difference(export_cache, seeded_detector):
    """The comparison is not vacuous: a perturbed input gives detections outside the tolerances."""
    height, width = UNIT_INPUT_HW
    images = generated_inputs(303, 1, height, width)
    ref_dets, ref_labels, _ = _torch_reference(seeded_detector, images, height, width)
    path = export_cache("raw", height, width, batch_size=None)
    dets, labels = _ort_detections(path, "raw", {"input": (images + 0.05).numpy()})
    assert not within_tolerances(compare_detections(ref_dets, ref_labels, dets, labels))


def _generated_bgr_images(seed, sizes):
    rng = np.random.RandomState(seed)
    images = []
    for h, w in sizes:
        coarse = rng.randint(0, 256, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
        image = np.kron(coarse, np.ones((8, 8, 1), np.uint8))[:h, :w]
        images.append(np.clip(image.astype(np.int16) + rng.randint(-20, 20, size=image.shape), 0, 255).astype(np.uint8))
    return images


def test_uint8_input_graph_matches_the_float_path(export_cache, seeded_detector):
    """uint8 mode: normalisation in the graph, zero padding restored from each image's size."""
    from fsaf_repro import data
    height, width = UNIT_INPUT_HW
    bgr_images = _generated_bgr_images(7, [(150, 256), (192, 100)])  # landscape and portrait letterboxes
    floats, canvases, sizes = [], [], []
    for bgr in bgr_images:
        chw, _, new_h, new_w = data.letterbox_to_canvas(bgr, height, width)
        canvas, _, new_h8, new_w8 = data.letterbox_to_canvas_uint8(bgr, height, width)
        assert (new_h, new_w) == (new_h8, new_w8)
        floats.append(chw)
        canvases.append(canvas)
        sizes.append((new_h, new_w))
    assert canvases[0].nbytes * 4 == floats[0].nbytes
    images = torch.from_numpy(np.stack(floats))
    ref_dets, ref_labels, _ = _torch_reference(seeded_detector, images, height, width)
    path = export_cache("onnx-nms", height, width, batch_size=None, input_dtype="uint8")
    dets, labels = _ort_detections(path, "onnx-nms", {"input": np.stack(canvases),
                                                      "image_hw": np.array(sizes, dtype=np.int32)})
    _assert_same_detections(ref_dets, ref_labels, dets, labels)


def test_fp16_agreement_counts_reference_detections_found_within_both_tolerances():
    from fsaf_repro.parity import fp16_agreement
    ref = np.zeros((1, 100, 5), np.float32)
    ref[0, 0] = [10, 10, 50, 50, 0.9]
    ref[0, 1] = [60, 60, 90, 90, 0.5]
    ref[0, 2] = [5, 5, 15, 15, 0.06]   # near the threshold: the other side dropped it
    ref_labels = np.zeros((1, 100), np.int64)
    other = np.zeros((1, 100, 5), np.float32)
    other[0, 0] = [11.5, 10, 50, 50, 0.903]   # within 2 px and 0.005
    other[0, 1] = [60, 63, 90, 90, 0.5]       # 3 px off
    other[0, 2] = [100, 100, 120, 120, 0.07]  # kept on this side only: far from everything
    labels = np.zeros((1, 100), np.int64)
    got = fp16_agreement(ref, ref_labels, other, labels, box_tol=2.0, score_tol=0.005)
    assert (got["found"], got["total"]) == (1, 3)
    assert got["rate"] == pytest.approx(1 / 3.0)
    labels[0, 0] = 5  # a different label is never a match
    assert fp16_agreement(ref, ref_labels, other, labels, box_tol=2.0, score_tol=0.005)["found"] == 0
    assert fp16_agreement(ref, ref_labels, other, np.zeros((1, 100), np.int64), box_tol=3.0,
                          score_tol=0.005)["found"] == 2


def test_parity_pairs_are_chosen_by_role_not_by_label():
    from fsaf_repro.parity import ParitySide, SideRole, pairs_wanted
    # labels that would fool a substring match: the om side's label says nothing of "om"
    reference = ParitySide(SideRole.REFERENCE, "ref", "torch")
    onnx = ParitySide(SideRole.ONNX_NMS, "graph nms (om-like name)", "onnxruntime")
    raw = ParitySide(SideRole.RAW_HOST_NMS, "host", "onnxruntime")
    om = ParitySide(SideRole.OM, "device side", "aclruntime")
    pairs = pairs_wanted([reference, onnx, raw, om])
    assert pairs == [(reference, onnx), (reference, raw), (reference, om), (onnx, om)]
    assert pairs_wanted([reference, raw]) == [(reference, raw)]  # no om: no onnx-vs-om pair
    assert not SideRole.RAW_HOST_NMS.runs_the_dataset_model and SideRole.OM.runs_the_dataset_model
    assert ParitySide.from_record(om.as_record()) == om
