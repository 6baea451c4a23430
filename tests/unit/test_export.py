"""ONNX export: documented inputs/outputs per flavour, sidecar, atomicity, the Ascend node's structure."""
import json
import os

import numpy as np
import onnx
import pytest
import torch

from fsaf_repro import export as export_mod
from fsaf_repro.checkpoint import file_sha256
from fsaf_repro.cli import main as cli_main
from fsaf_repro.errors import CheckpointError, ExportError
from fsaf_repro.spec import model_constants

from tests.support import UNIT_INPUT_HW

ELEM_TYPES = {1: "float32", 7: "int64", 10: "float16", 6: "int32", 2: "uint8"}


def _value_info(value):
    tensor_type = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor_type.shape.dim]
    return value.name, dims, ELEM_TYPES.get(tensor_type.elem_type, tensor_type.elem_type)


@pytest.mark.parametrize("flavour", ["onnx-nms", "ascend-nms", "raw"])
def test_export_has_the_documented_inputs_outputs_and_sidecar(export_cache, seeded_checkpoint, flavour):
    height, width = UNIT_INPUT_HW
    path = export_cache(flavour, height, width, batch_size=2)
    model = onnx.load(path)
    assert [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")] == [11]
    assert [_value_info(v) for v in model.graph.input] == [("input", [2, 3, height, width], "float32")]
    outputs = [_value_info(v) for v in model.graph.output]
    if flavour == "raw":
        n = export_mod.num_candidates(height, width)
        assert [(name, dtype) for name, _, dtype in outputs] == [("boxes", "float32"), ("scores", "float32")]
        assert outputs[0][1] == [2, n, 4] and outputs[1][1] == [2, n, 80]
    else:
        assert [(name, dtype) for name, _, dtype in outputs] == [("dets", "float32"), ("labels", "int64")]
        assert outputs[0][1] == [2, 100, 5] and outputs[1][1] == [2, 100]
    with open(path + ".json") as handle:
        sidecar = json.load(handle)
    assert sidecar["flavour"] == flavour
    assert sidecar["input"] == {"name": "input", "shape": [2, 3, height, width], "dtype": "float32"}
    assert sidecar["opset"] == 11 and sidecar["batch_size"] == 2
    assert sidecar["checkpoint_sha256"] == file_sha256(seeded_checkpoint)
    assert sidecar["onnx_sha256"] == file_sha256(path)
    assert sidecar["torch_version"] == torch.__version__ and sidecar["onnx_version"] == onnx.__version__
    assert sidecar["normalisation"]["in_graph"] is False
    assert sidecar["nms"]["iou_threshold"] == model_constants()["iou_threshold"]
    if flavour != "ascend-nms":
        onnx.checker.check_model(model)


def test_ascend_nms_node_structure(export_cache):
    height, width = UNIT_INPUT_HW
    path = export_cache("ascend-nms", height, width, batch_size=2)  # the export the layout test checks
    model = onnx.load(path)
    nodes = [n for n in model.graph.node if n.op_type == "BatchMultiClassNMS"]
    assert len(nodes) == 1
    node = nodes[0]
    assert node.domain == ""
    attributes = dict((a.name, onnx.helper.get_attribute_value(a)) for a in node.attribute)
    constants = model_constants()
    assert attributes == {
        "score_threshold": pytest.approx(constants["score_threshold"]),
        "iou_threshold": pytest.approx(constants["iou_threshold"]),
        "max_size_per_class": constants["ascend_max_size_per_class"],
        "max_total_size": constants["ascend_max_total_size"],
    }
    assert sorted(a.type for a in node.attribute if a.name.endswith("threshold")) == [1, 1]  # FLOAT
    assert len(node.input) == 2 and len(node.output) == 4
    # Its inputs: fp16 boxes [B, N, 1, 4] and fp16 scores [B, N, 80] (shape inference up to the node).
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = dict((v.name, _value_info(v)) for v in inferred.graph.value_info)
    n = export_mod.num_candidates(height, width)
    # Where ONNX shape inference can tell a dim (it cannot see through the FPN's Resize sizes, which
    # the exporter computes from Shape ops), it must be the documented one.
    for name, expected in ((node.input[0], [2, n, 1, 4]), (node.input[1], [2, n, 80])):
        _, dims, dtype = infos[name]
        assert dtype == "float16"
        if not dims:  # onnx 1.9 infers the dtype through the exporter's ops but not the rank
            continue
        assert len(dims) == len(expected)
        assert all(d == e for d, e in zip(dims, expected) if isinstance(d, int) and d > 0), (dims, expected)
        assert dims[0] == 2 and dims[-1] == expected[-1]
    # dets = concat(boxes, scores) cast to float32, labels = classes cast to int64.
    consumers = [n for n in model.graph.node if set(n.input) & set(node.output)]
    assert {c.op_type for c in consumers} >= {"Concat", "Cast"}
    assert node.output[3] not in [i for c in consumers for i in c.input]  # valid count unused
    assert not [n for n in model.graph.node if n.op_type == "NonMaxSuppression"]
    assert [n for n in model.graph.node if n.op_type == "TopK"]  # the per-level top-1000 stays


def test_dynamic_batch_export_accepts_any_batch(export_cache):
    ort = pytest.importorskip("onnxruntime")
    height, width = UNIT_INPUT_HW
    path = export_cache("onnx-nms", height, width, batch_size=None)
    model = onnx.load(path)
    assert _value_info(model.graph.input[0])[1][0] == "batch"
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    from tests.support import generated_inputs

    images = generated_inputs(5, 3, height, width).numpy()
    dets3, labels3 = session.run(None, {"input": images})
    dets1, labels1 = session.run(None, {"input": images[1:2]})
    assert dets3.shape == (3, 100, 5) and labels3.dtype == np.int64
    assert np.allclose(dets3[1], dets1[0], atol=1e-4) and np.array_equal(labels3[1], labels1[0])


def test_failed_export_leaves_no_partial_file(tmp_path, seeded_checkpoint, monkeypatch):
    def broken_export(module, args, path, *rest, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half an onnx file")
        raise RuntimeError("simulated exporter crash")

    monkeypatch.setattr(export_mod, "_torch_export", broken_export)
    out = tmp_path / "fsaf.onnx"
    with pytest.raises(ExportError) as info:
        export_mod.export_onnx(seeded_checkpoint, str(out), height=64, width=64)
    assert "simulated exporter crash" in str(info.value)
    assert os.listdir(str(tmp_path)) == []


def test_export_rejected_by_the_checker_leaves_no_file(tmp_path, seeded_checkpoint, export_cache, monkeypatch):
    # the exporter's work is the session's cached export (the rule is about what happens after it)
    import shutil
    height, width = UNIT_INPUT_HW
    cached = export_cache("raw", height, width, batch_size=None)

    def cached_export(module, args, path, *rest, **kwargs):
        shutil.copyfile(cached, path)

    def rejecting_check(path, flavour):
        raise ExportError("onnx.checker rejected the exported model: simulated")

    monkeypatch.setattr(export_mod, "_torch_export", cached_export)
    monkeypatch.setattr(export_mod, "check_exported_model", rejecting_check)
    out = tmp_path / "fsaf.onnx"
    with pytest.raises(ExportError, match="simulated"):
        export_mod.export_onnx(seeded_checkpoint, str(out), flavour="raw", height=height, width=width)
    assert os.listdir(str(tmp_path)) == []


def test_bad_checkpoint_gives_an_error_naming_it_and_no_output(tmp_path):
    bogus = tmp_path / "fsaf_r50_fpn_1x_coco-94ccc51f.pth"
    bogus.write_text("<html>download failed</html>")
    out = tmp_path / "out" / "fsaf.onnx"
    with pytest.raises(CheckpointError) as info:
        export_mod.export_onnx(str(bogus), str(out), height=64, width=64)
    assert str(bogus) in str(info.value)
    assert not out.exists()


def test_bad_arguments_are_refused(tmp_path, seeded_checkpoint):
    with pytest.raises(ExportError, match="unknown flavour"):
        export_mod.export_onnx(seeded_checkpoint, str(tmp_path / "x.onnx"), flavour="tensorrt")
    with pytest.raises(ExportError, match="too small"):
        export_mod.export_onnx(seeded_checkpoint, str(tmp_path / "x.onnx"), height=16, width=64)
    with pytest.raises(ExportError, match="batch size"):
        export_mod.export_onnx(seeded_checkpoint, str(tmp_path / "x.onnx"), batch_size=0)
    assert os.listdir(str(tmp_path)) == []


def test_cli_export_with_seeded_weights(tmp_path, capsys):
    out = tmp_path / "cli" / "fsaf_raw.onnx"
    status = cli_main(["export", "--seeded", "0", "--output", str(out), "--flavour", "raw",
                       "--height", "64", "--width", "96", "--dynamic-batch"])
    assert status == 0
    assert out.exists()
    with open(str(out) + ".json") as handle:
        sidecar = json.load(handle)
    assert sidecar["batch_size"] == "dynamic" and sidecar["flavour"] == "raw"
    assert os.path.exists(sidecar["checkpoint"]["path"])  # the seeded checkpoint, in the official layout
    assert "exported" in capsys.readouterr().out


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    status = cli_main(["export", "--checkpoint", str(tmp_path / "absent.pth"), "--output", str(tmp_path / "x.onnx")])
    assert status == 1
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "absent.pth" in err
