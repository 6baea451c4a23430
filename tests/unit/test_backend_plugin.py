"""A backend registered from outside the package runs through `reproduce` with no other change (issue 10).

The dummy backend below is registered by this test only. It states its facts on its class (it takes
the checkpoint, its records are labelled with its own device and precision) and returns one fixed
detection per image, through a static batch of 2 that `run_padded` pads. reproduce asks the class,
not a list of names, so the dummy gets its data-set inference, results json, evaluation and
pure-inference records like the built-in backends.
"""
import json
import os

import pytest

from fsaf_repro import backends
from fsaf_repro.backends.base import MODEL_CHECKPOINT, empty_outputs
from fsaf_repro.errors import BackendError
from fsaf_repro.reproduce import run_reproduce
from fsaf_repro.reproduce_options import ReproduceOptions
from tests.conftest import tiny_run_options

NAME = "dummy-plugin"
DEVICE = "dummy-device"
PRECISION = "dummy-precision"
BOX = [8.0, 6.0, 40.0, 30.0, 0.9]  # x1, y1, x2, y2, score in network-input pixels
# On a copy of the session's tiny run (its checkpoint, export and generated set are reused), limited to 5
# images so that the last batch of the dummy's static batch 2 comes padded.
TINY = tiny_run_options(backends=NAME, batch_sizes="2", limit=5)
NUM_IMAGES = TINY["limit"]


class DummyBackend(backends.Backend):
    """One fixed detection per image; the model file must exist but is not read."""

    name = NAME
    model_kind = MODEL_CHECKPOINT
    takes_threads = True
    loaded = []  # (model path, options) of every load, for the test

    @classmethod
    def device_label(cls, soc_version=None):
        return DEVICE

    @classmethod
    def precision(cls, om_precision="force_fp16"):
        return PRECISION

    def load(self, model_path):
        if not os.path.isfile(str(model_path)):
            raise BackendError(f"{self.name}: no model file {model_path}")
        self.model_path = str(model_path)
        self.batch_size = 2  # static, as the run's batch size: the last of 3 images comes padded
        DummyBackend.loaded.append((self.model_path, dict(self.options)))
        return self

    def run(self, batch, image_hw=None):
        size = self.check_batch(batch)
        out = empty_outputs(size)
        out["dets"][:, 0] = BOX
        out["labels"][:, 0] = 0
        return out


@pytest.fixture
def dummy_backend():
    backends.register_backend(NAME, DummyBackend)
    DummyBackend.loaded = []
    yield DummyBackend
    backends.unregister_backend(NAME)


def _read(*parts):
    with open(os.path.join(*parts)) as handle:
        return json.load(handle)


def test_a_registered_backend_runs_through_reproduce(dummy_backend, tiny_run_copy):
    run_dir = tiny_run_copy
    summary = run_reproduce(ReproduceOptions(run_dir=run_dir, **TINY))
    assert summary["backends_run"] == [NAME]
    for stage in ("infer:", "results:", "evaluate:", "perf:"):
        assert summary["stages"][stage + NAME] == "ran"
    # it was given the checkpoint and the options its class asks for (a thread count)
    checkpoints = {path for path, _ in dummy_backend.loaded}
    assert checkpoints == {os.path.join(run_dir, "inputs", "fsaf_seeded_0.pth")}
    assert all(options.get("threads") == 1 for _, options in dummy_backend.loaded)
    # results json: its one detection per image (the padded image's output dropped)
    results = _read(run_dir, f"results_{NAME}.json")
    manifest = _read(run_dir, "data_manifest.json")
    assert sorted(r["image_id"] for r in results) == sorted(m["image_id"] for m in manifest["images"])
    assert all(r["score"] == pytest.approx(BOX[4]) for r in results)
    # evaluate entry
    metrics = _read(run_dir, f"metrics_{NAME}.json")
    assert metrics["num_images"] == NUM_IMAGES and len(metrics["stats"]) == 12
    assert summary["metrics"][NAME] == metrics["stats"]
    # perf records with its own labels: data-set (e2e, inference) and pure inference
    records = [r for r in _read(run_dir, "perf.json")["records"] if r["backend"] == NAME]
    assert sorted(r["mode"] for r in records) == ["e2e", "inference", "pure_inference"]
    assert all((r["device"], r["precision"]) == (DEVICE, PRECISION) for r in records)
    pure = next(r for r in records if r["mode"] == "pure_inference")
    assert pure["batch_size"] == 2 and "1 intra-op thread(s)" in pure["note"]
    # the report's backend row
    rows = _read(run_dir, "report_inputs.json")["backends"]
    assert [(r["name"], r["status"], r["device"], r["precision"]) for r in rows] == [
        (NAME, "ran", DEVICE, PRECISION)]


# The facts of the built-in backends: the labels reproduce's records carried before they moved onto
# the classes (device_label / backend_precision by name lists), asked without any runtime installed.
FACTS = [  # name, model_kind, takes_threads, device label (soc Ascend310P3), precision (force_fp16)
    ("torch", "checkpoint", True, "cpu", "fp32"),
    ("onnxruntime", "onnx-nms", True, "cpu", "fp32"),
    ("onnxruntime-cuda", "onnx-nms", True, "gpu", "fp32"),
    ("onnxruntime-tensorrt", "onnx-nms", True, "gpu", "fp32"),
    ("onnxruntime-cann", "onnx-nms", True, "310P", "fp32"),
    ("aclruntime", "om", False, "310P", "fp16"),
    ("ais_bench", "om", False, "310P", "fp16"),
    ("benchmark", "om", False, "310P", "fp16"),
    ("null", None, False, "cpu", "fp32"),
]


@pytest.mark.parametrize("name, kind, threads, device, precision", FACTS)
def test_the_built_in_backends_state_their_facts(name, kind, threads, device, precision):
    cls = backends.get_backend_class(name)
    assert (cls.model_kind, cls.takes_threads) == (kind, threads)
    assert (cls.device_label("Ascend310P3"), cls.precision("force_fp16")) == (device, precision)
    if cls.device_kind == "npu":
        assert cls.device_label("Ascend310") == "310" and cls.device_label(None) == "npu"
    if kind == "om":
        assert cls.precision("allow_fp32_to_fp16") == "allow_fp32_to_fp16"


def test_the_fp16_emulation_labels_its_records_as_such():
    from fsaf_repro.backends.fp16_emulation import RECORD_DEVICE, RECORD_PRECISION
    from fsaf_repro.errors import ResultsError
    cls = backends.get_backend_class("fp16-emulated")
    assert (cls.model_kind, cls.takes_threads) == ("checkpoint", True)
    assert (cls.device_label("Ascend310P3"), cls.precision()) == (RECORD_DEVICE, RECORD_PRECISION)
    assert cls.record_labels("cpu", "fp32") == (RECORD_DEVICE, RECORD_PRECISION)
    with pytest.raises(ResultsError, match="not an NPU measurement"):
        cls.record_labels("310P", "fp16")
    with pytest.raises(ResultsError, match="must be labelled device"):
        cls.check_record({"backend": "fp16-emulated", "device": "310P", "precision": "fp16"}, "here")


def test_run_padded_splits_pads_and_drops_the_padding():
    import numpy as np
    batch = np.random.RandomState(0).standard_normal((5, 3, 16, 24)).astype(np.float32)
    dynamic = backends.create_backend("null", detections="echo").load()
    static = backends.create_backend("null", detections="echo", batch_size=2).load()
    expected = dynamic.run(batch)
    got = static.run_padded(batch)  # runs 2 + 2 + (1 padded to 2)
    for key in ("dets", "labels"):
        np.testing.assert_array_equal(got[key], expected[key])
    seen = []

    class Sizes(backends.Backend):
        name = "sizes"

        def run(self, batch, image_hw=None):
            seen.append((batch.shape[0], None if image_hw is None else np.asarray(image_hw).tolist()))
            return empty_outputs(batch.shape[0])

    sizes = Sizes()
    sizes.batch_size = 4
    out = sizes.run_padded(batch[:3], image_hw=[[10, 20], [11, 21], [12, 22]])
    assert out["dets"].shape[0] == 3
    assert seen == [(4, [[10, 20], [11, 21], [12, 22], [16, 24]])]  # the padding row: the canvas size
