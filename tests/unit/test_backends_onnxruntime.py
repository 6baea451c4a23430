"""The onnxruntime and torch backends on small exported models (seeded weights, reduced input size)."""
import numpy as np
import pytest

from fsaf_repro import backends
from fsaf_repro.errors import BackendError, BatchSizeMismatch
from fsaf_repro.spec import parity_tolerances
from tests.support import UNIT_INPUT_HW, generated_inputs

ORT = backends.backend_availability("onnxruntime")
pytestmark = pytest.mark.skipif(not ORT.ok, reason="onnxruntime unavailable: " + ORT.reason)
H, W = UNIT_INPUT_HW


@pytest.fixture(scope="module")
def inputs():
    return generated_inputs(0, 2, H, W).numpy()


@pytest.fixture(scope="module")
def torch_outputs(seeded_checkpoint, inputs):
    with backends.create_backend("torch", threads=2) as backend:
        backend.load(seeded_checkpoint)
        assert backend.batch_size is None
        return backend.run(inputs)


def assert_same_detections(a, b):
    """Same detections per image within the parity tolerances, in any order: rows whose scores tie to
    1e-7 may come out of the two NMS implementations in either order."""
    tol = parity_tolerances()
    total = 0
    for n in range(a["dets"].shape[0]):
        rows_a = np.nonzero(a["dets"][n, :, 4] > 0)[0]
        rows_b = list(np.nonzero(b["dets"][n, :, 4] > 0)[0])
        assert len(rows_a) == len(rows_b), f"image {n}: {len(rows_a)} vs {len(rows_b)} detections"
        for i in rows_a:
            close = [j for j in rows_b
                     if b["labels"][n, j] == a["labels"][n, i]
                     and np.abs(b["dets"][n, j, :4] - a["dets"][n, i, :4]).max() <= tol["box_abs_tol_px"]
                     and abs(b["dets"][n, j, 4] - a["dets"][n, i, 4]) <= tol["score_abs_tol"]]
            assert close, "image {} row {} ({}, label {}) has no counterpart".format(
                n, i, a["dets"][n, i], a["labels"][n, i])
            rows_b.remove(close[0])
        total += len(rows_a)
    assert total > 0  # the seeded weights do detect something: the comparison is not vacuous


@pytest.mark.parametrize("flavour", ["onnx-nms", "raw"])
def test_onnxruntime_matches_the_torch_backend(export_cache, inputs, torch_outputs, flavour):
    model = export_cache(flavour, H, W)
    with backends.create_backend("onnxruntime", threads=2, graph_optimization="all") as backend:
        backend.load(model)
        assert backend.batch_size is None and backend.flavour == ("raw" if flavour == "raw" else "nms")
        out = backend.run(inputs)
        assert out["dets"].dtype == np.float32 and out["labels"].dtype == np.int64
        assert_same_detections(torch_outputs, out)
        # any batch size on a dynamic-batch model
        single = backend.run(inputs[1:])
        assert_same_detections({k: v[1:] for k, v in torch_outputs.items()}, single)


def test_static_batch_model_refuses_other_batch_sizes(export_cache, inputs):
    backend = backends.create_backend("onnxruntime").load(export_cache("onnx-nms", H, W, batch_size=2))
    assert backend.batch_size == 2
    assert backend.run(inputs)["dets"].shape[0] == 2
    with pytest.raises(BatchSizeMismatch, match="static batch size of 2 but was given a batch of 1"):
        backend.run(inputs[:1])


def test_session_options_are_applied(export_cache):
    backend = backends.create_backend("onnxruntime", threads=1, inter_op_threads=1, graph_optimization="basic",
                                      execution_mode="parallel", allow_spinning=False).load(
                                          export_cache("onnx-nms", H, W))
    options = backend.session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(BackendError, match="graph_optimization"):
        backends.create_backend("onnxruntime", graph_optimization="max").load(export_cache("onnx-nms", H, W))


def test_unloadable_models_are_explained(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x00not a model")
    with pytest.raises(BackendError, match="could not load .*broken.onnx"):
        backends.create_backend("onnxruntime").load(str(bad))
    (tmp_path / "ascend.onnx").write_bytes(b"")
    (tmp_path / "ascend.onnx.json").write_text('{"flavour": "ascend-nms", "batch_size": 1}')
    with pytest.raises(BackendError, match="only atc"):
        backends.create_backend("onnxruntime").load(str(tmp_path / "ascend.onnx"))


def test_uint8_model_needs_image_hw(export_cache, torch_outputs):
    backend = backends.create_backend("onnxruntime").load(export_cache("onnx-nms", H, W, input_dtype="uint8"))
    assert backend.input_dtype == np.uint8 and len(backend.input_names) == 2
    canvas = np.full((1, 3, H, W), 128, np.uint8)
    with pytest.raises(BackendError, match="image_hw"):
        backend.run(canvas)
    with pytest.raises(BackendError, match="takes uint8 input but the batch is float32"):
        backend.run(canvas.astype(np.float32))
    out = backend.run(canvas, image_hw=[[H, W]])
    assert out["dets"].shape == (1, torch_outputs["dets"].shape[1], 5)


def test_accelerator_providers_report_what_to_install():
    import onnxruntime as ort
    available = ort.get_available_providers()
    for name, provider, word in (("onnxruntime-cuda", "CUDAExecutionProvider", "onnxruntime-gpu"),
                                 ("onnxruntime-tensorrt", "TensorrtExecutionProvider", "TensorRT"),
                                 ("onnxruntime-cann", "CANNExecutionProvider", "onnxruntime-cann")):
        avail = backends.backend_availability(name)
        assert avail.ok == (provider in available)
        if not avail.ok:
            assert word in avail.reason and provider in avail.reason


def test_torch_backend_refuses_uint8(seeded_checkpoint):
    backend = backends.create_backend("torch").load(seeded_checkpoint)
    with pytest.raises(BackendError, match="float32"):
        backend.run(np.zeros((1, 3, 64, 64), np.uint8))
