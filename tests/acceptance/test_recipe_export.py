"""Recipe section 3.1: the official checkpoint loads strictly and exports to ONNX with the documented
inputs and outputs, in each flavour.

Each claim runs twice: on the official checkpoint (FSAF_CHECKPOINT; skipped without it) and on seeded
weights written in the official layout ("generated" in the test id), which runs on any host. The generated
exports are at the recipe's 800x1216 for the onnx-nms flavour and at a reduced size for the other two
(an R50-FPN export takes tens of seconds on two cores); official exports are all at 800x1216.
"""
import pytest
import torch

from fsaf_repro.checkpoint import expected_layout, file_sha256, load_detector, load_state_dict
from fsaf_repro.export import FLAVOURS, check_exported_model, num_candidates
from fsaf_repro.spec import input_constants, load_recipe_spec, model_constants

from tests.support import UNIT_INPUT_HW

ELEM_TYPES = {1: "float32", 7: "int64", 10: "float16", 6: "int32", 2: "uint8"}


def export_size(kind, flavour):
    inp = input_constants()
    if kind == "official" or flavour == "onnx-nms":
        return inp["height"], inp["width"]
    return UNIT_INPUT_HW


def value_info(value):
    tensor_type = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor_type.shape.dim]
    return {"name": value.name, "dims": dims, "dtype": ELEM_TYPES.get(tensor_type.elem_type, tensor_type.elem_type)}


def documented(entry, height, width):
    """A spec onnx_io entry with its placeholders resolved for an export of height x width."""
    constants = model_constants()
    values = {"height": height, "width": width, "max_per_img": constants["max_per_img"],
              "classes": constants["num_classes"], "candidates": num_candidates(height, width)}
    return {"name": entry["name"], "dtype": entry["dtype"],
            "dims": [values.get(d, d) if isinstance(d, str) else d for d in entry["dims"]]}


def test_checkpoint_loads_strictly(checkpoint_of, checkpoint_kind):
    """Every key of FSAF R50-FPN is present with its shape and nothing else is (a RetinaNet or a truncated
    file raises CheckpointError listing the keys), and the detector builds from it."""
    path = checkpoint_of(checkpoint_kind)
    state_dict = load_state_dict(path)
    layout = expected_layout()
    assert set(state_dict) <= set(layout)
    assert [k for k in layout if k not in state_dict and not k.endswith("num_batches_tracked")] == []
    assert all(tuple(state_dict[k].shape) == layout[k] for k in state_dict)
    detector = load_detector(path)
    head_bias = dict(detector.named_parameters())["bbox_head.retina_cls.bias"]
    assert torch.equal(head_bias, state_dict["bbox_head.retina_cls.bias"])


def test_official_checkpoint_is_the_published_file(official_checkpoint):
    """Its sha256 starts with the 8 hex digits in the published file name."""
    spec = load_recipe_spec()["checkpoint"]
    digest = file_sha256(official_checkpoint)
    assert digest.startswith(spec["sha256_prefix"]), (
        "{} has sha256 {}: not the published {} ({})".format(official_checkpoint, digest, spec["file_name"],
                                                              spec["source"]))


def test_generated_checkpoint_is_labelled_and_never_the_published_file(seeded_checkpoint):
    """The stand-in says it is seeded and cannot pass for the official file."""
    obj = torch.load(seeded_checkpoint, map_location="cpu")
    assert obj["meta"]["seeded"] is True
    assert not file_sha256(seeded_checkpoint).startswith(load_recipe_spec()["checkpoint"]["sha256_prefix"])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_exports_with_the_documented_inputs_and_outputs(onnx_export, checkpoint_of, checkpoint_kind, flavour):
    """opset 11, input `input` [batch, 3, H, W] float32, outputs dets/labels (NMS flavours) or boxes/scores
    (raw), each with its documented dtype and dims (spec acceptance.onnx_io), and the flavour's NMS node."""
    height, width = export_size(checkpoint_kind, flavour)
    path, sidecar = onnx_export(checkpoint_of(checkpoint_kind), checkpoint_kind, flavour, height, width, None)
    io_spec = load_recipe_spec()["acceptance"]["onnx_io"]
    model = check_exported_model(path, flavour)  # onnx.checker (standard flavours) and the NMS node
    opsets = [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")]
    assert opsets == [model_constants()["opset"]]

    inputs = [value_info(v) for v in model.graph.input]
    wanted_input = documented(io_spec["input"], height, width)
    assert len(inputs) == 1 and inputs[0]["name"] == wanted_input["name"]
    assert inputs[0]["dtype"] == wanted_input["dtype"]
    assert inputs[0]["dims"][1:] == wanted_input["dims"][1:]
    batch_dim = inputs[0]["dims"][0]
    assert isinstance(batch_dim, str) and batch_dim, "a dynamic-batch export has a symbolic batch dim"

    outputs = [value_info(v) for v in model.graph.output]
    wanted = [documented(o, height, width) for o in io_spec["outputs"][flavour]]
    assert [(o["name"], o["dtype"]) for o in outputs] == [(o["name"], o["dtype"]) for o in wanted]
    for got, want in zip(outputs, wanted):
        assert got["dims"][1:] == want["dims"][1:], (got, want)
        assert isinstance(got["dims"][0], str)
    assert sidecar["flavour"] == flavour and sidecar["opset"] == model_constants()["opset"]
    assert sidecar["checkpoint_sha256"] == file_sha256(checkpoint_of(checkpoint_kind))
    assert [o["name"] for o in sidecar["outputs"]] == [o["name"] for o in wanted]
