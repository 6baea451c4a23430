"""The backend registry, availability reporting and the null backend."""
import numpy as np
import pytest

from fsaf_repro import backends
from fsaf_repro.backends.base import empty_outputs, normalise_outputs, read_output_files
from fsaf_repro.errors import BackendError, BackendUnavailable, BatchSizeMismatch, OutputFormatError
from fsaf_repro.spec import model_constants

EXPECTED = ["aclruntime", "ais_bench", "benchmark", "fp16-emulated", "null", "onnxruntime",
            "onnxruntime-cann", "onnxruntime-cuda", "onnxruntime-tensorrt", "torch"]
MAX_DETS = model_constants()["max_per_img"]


def test_every_backend_is_registered_and_reports_availability():
    assert backends.backend_names() == EXPECTED
    for name in EXPECTED:
        avail = backends.backend_availability(name)
        assert isinstance(avail.ok, bool)
        if not avail.ok:
            # an absent runtime names what to install or provide
            assert any(word in avail.reason for word in ("install", "put ", "provide")), (name, avail.reason)
    assert backends.backend_availability("null").ok


def test_unknown_and_unavailable_backends_raise_with_the_reason(monkeypatch, tmp_path):
    with pytest.raises(BackendUnavailable, match="known backends: aclruntime"):
        backends.create_backend("tensorflow")
    monkeypatch.setenv("PATH", str(tmp_path))  # no benchmark tool anywhere
    with pytest.raises(BackendUnavailable, match="benchmark.*not on PATH"):
        backends.create_backend("benchmark")


def test_null_backend_returns_well_formed_empty_outputs():
    with backends.create_backend("null") as backend:
        backend.load()
        out = backend.run(np.zeros((3, 3, 32, 48), np.float32))
    assert out["dets"].shape == (3, MAX_DETS, 5) and out["dets"].dtype == np.float32
    assert out["labels"].shape == (3, MAX_DETS) and out["labels"].dtype == np.int64
    assert not out["dets"][..., 4].any()  # every row is padding (score 0)


def test_static_batch_mismatch_is_refused_naming_both_sizes():
    backend = backends.create_backend("null", batch_size=4).load("model_bs4.om")
    assert backend.run(np.zeros((4, 3, 8, 8), np.float32))["dets"].shape[0] == 4
    with pytest.raises(BatchSizeMismatch, match="static batch size of 4 but was given a batch of 3"):
        backend.run(np.zeros((3, 3, 8, 8), np.float32))
    with pytest.raises(BackendError, match="NCHW"):
        backend.run(np.zeros((4, 8, 8), np.float32))


def test_normalise_outputs_casts_and_checks_shapes():
    out = normalise_outputs(np.ones((2, MAX_DETS, 5), np.float16), np.ones((2, MAX_DETS), np.int32), 2, "m")
    assert out["dets"].dtype == np.float32 and out["labels"].dtype == np.int64
    with pytest.raises(BackendError, match="expected dets"):
        normalise_outputs(np.ones((2, 7, 5)), np.ones((2, 7)), 2, "m")
    assert empty_outputs(2)["dets"].shape == (2, MAX_DETS, 5)


@pytest.mark.parametrize("dets_dtype, labels_dtype", [(np.float32, np.int64), (np.float16, np.int32)])
def test_tool_output_files_dtype_from_size(tmp_path, dets_dtype, labels_dtype):
    dets = np.zeros((2, MAX_DETS, 5), dets_dtype)
    dets[1, 0] = [1, 2, 3, 4, 0.5]
    labels = np.zeros((2, MAX_DETS), labels_dtype)
    labels[1, 0] = 79
    dets.tofile(str(tmp_path / "d.bin"))
    labels.tofile(str(tmp_path / "l.bin"))
    out = read_output_files(str(tmp_path / "d.bin"), str(tmp_path / "l.bin"), 2, "tool")
    np.testing.assert_array_equal(out["dets"][1, 0], [1, 2, 3, 4, 0.5])
    assert out["labels"][1, 0] == 79 and out["labels"].dtype == np.int64
    with pytest.raises(OutputFormatError, match="bytes"):
        read_output_files(str(tmp_path / "d.bin"), str(tmp_path / "l.bin"), 3, "tool")
    with pytest.raises(OutputFormatError, match="missing"):
        read_output_files(str(tmp_path / "x.bin"), str(tmp_path / "l.bin"), 2, "tool")
