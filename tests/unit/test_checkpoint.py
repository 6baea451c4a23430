"""Checkpoint loading: official layout, strict validation, safe unpickling, seeded weights."""
import collections
import os
import pickle

import numpy as np
import pytest
import torch

from fsaf_repro import checkpoint as ckpt
from fsaf_repro.decode import count_candidates
from fsaf_repro.errors import CheckpointError
from fsaf_repro.spec import load_recipe_spec, model_constants

from tests.support import UNIT_INPUT_HW, generated_inputs


def _load_raw(path):
    kwargs = {"map_location": "cpu"}
    if ckpt.torch_has_weights_only_load():
        kwargs["weights_only"] = False
    return torch.load(path, **kwargs)


def test_seeded_checkpoint_has_the_official_layout(seeded_checkpoint):
    raw = _load_raw(seeded_checkpoint)
    assert sorted(raw) == ["meta", "state_dict"]
    layout = ckpt.expected_layout()
    assert list(raw["state_dict"]) == list(layout)
    for key, shape in layout.items():
        assert tuple(raw["state_dict"][key].shape) == shape, key
    assert raw["meta"]["CLASSES"] == tuple(load_recipe_spec()["coco_classes"])
    assert raw["meta"]["seeded"] is True


def test_official_key_names_and_shapes_from_the_facts_sheet():
    layout = ckpt.expected_layout()
    # A sample of the official checkpoint's keys (mmdetection 2.15's FSAF R50-FPN layout), with their shapes.
    expected = {
        "backbone.conv1.weight": (64, 3, 7, 7),
        "backbone.bn1.running_var": (64,),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.layer2.0.conv2.weight": (128, 128, 3, 3),
        "backbone.layer4.2.bn3.weight": (2048,),
        "neck.lateral_convs.0.conv.weight": (256, 512, 1, 1),
        "neck.lateral_convs.2.conv.bias": (256,),
        "neck.fpn_convs.3.conv.weight": (256, 2048, 3, 3),
        "neck.fpn_convs.4.conv.weight": (256, 256, 3, 3),
        "bbox_head.cls_convs.3.conv.weight": (256, 256, 3, 3),
        "bbox_head.reg_convs.0.conv.bias": (256,),
        "bbox_head.retina_cls.weight": (80, 256, 3, 3),
        "bbox_head.retina_cls.bias": (80,),
        "bbox_head.retina_reg.weight": (4, 256, 3, 3),
    }
    for key, shape in expected.items():
        assert layout[key] == shape, key
    assert not any(k.startswith("backbone.fc") for k in layout)
    # layer3: 6 blocks of 3 convs + 3 BNs (5 entries each), plus the downsample conv and BN.
    assert len([k for k in layout if k.startswith("backbone.layer3.")]) == 6 * (3 + 3 * 5) + (1 + 5)
    convs = [k for k in layout if k.endswith("conv.weight") and k.startswith(("neck", "bbox_head"))]
    assert all(k[:-len("weight")] + "bias" in layout for k in convs)  # neck/head convs have bias
    assert not any(k.startswith("backbone.") and ".conv" in k and k.endswith("bias") for k in layout)


def test_bare_state_dict_is_accepted(tmp_path, seeded_checkpoint):
    state_dict = _load_raw(seeded_checkpoint)["state_dict"]
    bare = tmp_path / "bare.pth"
    torch.save(state_dict, str(bare))
    model = ckpt.load_detector(str(bare))
    key = "bbox_head.retina_cls.bias"
    assert torch.equal(model.state_dict()[key], state_dict[key])


def test_missing_unexpected_and_misshaped_keys_are_listed_in_one_error(tmp_path, seeded_checkpoint):
    state_dict = collections.OrderedDict(_load_raw(seeded_checkpoint)["state_dict"])
    del state_dict["neck.fpn_convs.4.conv.bias"]
    state_dict["bbox_head.extra.weight"] = torch.zeros(3)
    state_dict["neck.lateral_convs.1.conv.weight"] = torch.zeros(256, 512, 1, 1)
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": state_dict, "meta": {}}, str(bad))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_detector(str(bad))
    message = str(info.value)
    assert str(bad) in message
    assert "missing: neck.fpn_convs.4.conv.bias" in message
    assert "unexpected: bbox_head.extra.weight" in message
    assert ("mis-shaped: neck.lateral_convs.1.conv.weight checkpoint [256, 512, 1, 1] "
            "vs model [256, 1024, 1, 1]") in message
    assert "1 missing, 1 unexpected, 1 mis-shaped" in message


def test_retinanet_checkpoint_is_refused_with_the_reason(tmp_path, seeded_checkpoint):
    state_dict = collections.OrderedDict(_load_raw(seeded_checkpoint)["state_dict"])
    # RetinaNet R50-FPN shares every key name with FSAF; only its 9-anchor heads differ in shape.
    state_dict["bbox_head.retina_cls.weight"] = torch.zeros(720, 256, 3, 3)
    state_dict["bbox_head.retina_cls.bias"] = torch.zeros(720)
    state_dict["bbox_head.retina_reg.weight"] = torch.zeros(36, 256, 3, 3)
    state_dict["bbox_head.retina_reg.bias"] = torch.zeros(36)
    path = tmp_path / "retinanet_r50_fpn_1x_coco.pth"
    torch.save({"state_dict": state_dict, "meta": {}}, str(path))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_state_dict(str(path))
    message = str(info.value)
    assert "720 outputs = 9 anchors x 80 classes" in message
    assert "RetinaNet" in message
    assert "4 mis-shaped" in message


def test_num_batches_tracked_is_optional(tmp_path, seeded_checkpoint):
    state_dict = collections.OrderedDict(
        (k, v) for k, v in _load_raw(seeded_checkpoint)["state_dict"].items()
        if not k.endswith("num_batches_tracked"))
    path = tmp_path / "old_layout.pth"
    torch.save({"state_dict": state_dict, "meta": {}}, str(path))
    model = ckpt.load_detector(str(path))
    assert torch.equal(model.state_dict()["backbone.bn1.weight"], state_dict["backbone.bn1.weight"])


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "not_a_checkpoint_pickle", "truncated"])
def test_unusable_files_give_an_error_naming_them(tmp_path, seeded_checkpoint, kind):
    path = tmp_path / ("input_" + kind + ".pth")
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "not_a_checkpoint_pickle":
        torch.save([1, 2, 3], str(path))
    elif kind == "truncated":
        with open(seeded_checkpoint, "rb") as handle:
            path.write_bytes(handle.read(4096))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_detector(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("size", [64, 1 << 16])
def test_random_bytes_are_not_a_checkpoint_rather_than_an_untrusted_one(tmp_path, size):
    path = tmp_path / "random.pth"
    path.write_bytes(np.random.RandomState(size).bytes(size))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_state_dict(str(path))
    message = str(info.value)
    assert f"{path} is not a PyTorch checkpoint" in message
    assert "trust" not in message  # trusting a damaged file would not help


def test_both_torch_save_layouts_are_recognised(tmp_path, seeded_checkpoint):
    """The check that tells random bytes from a checkpoint lets both layouts of torch.save through."""
    legacy = str(tmp_path / "legacy.pth")
    torch.save(_load_raw(seeded_checkpoint), legacy, _use_new_zipfile_serialization=False)
    assert ckpt.checkpoint_container(seeded_checkpoint) == "zip" and ckpt.checkpoint_container(legacy) == "legacy"
    loaded = ckpt.load_state_dict(legacy)
    assert torch.equal(loaded["backbone.bn1.weight"], _load_raw(seeded_checkpoint)["state_dict"]["backbone.bn1.weight"])


def test_random_bytes_through_the_cli_are_one_line(tmp_path, capsys):
    from fsaf_repro.cli import main
    path = tmp_path / "random.pth"
    path.write_bytes(np.random.RandomState(0).bytes(4096))
    assert main(["export", "--checkpoint", str(path), "--output", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a PyTorch checkpoint" in err and str(path) in err
    assert "--trust-checkpoint" not in err and not os.path.exists(str(tmp_path / "x.onnx"))


class _CodeExecutingPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.skipif(not ckpt.torch_has_weights_only_load(),
                    reason=f"this torch ({torch.__version__}) has no weights-only unpickler; the loader warns instead "
                           "(covered by test_old_torch_warns_once)")
def test_code_executing_pickle_is_refused(tmp_path, seeded_checkpoint, monkeypatch):
    marker = tmp_path / "pwned"
    state_dict = _load_raw(seeded_checkpoint)["state_dict"]
    path = tmp_path / "malicious.pth"
    torch.save({"state_dict": state_dict, "meta": {"payload": _CodeExecutingPayload(str(marker))}}, str(path))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_detector(str(path))
    assert "refused" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists(), "the payload ran"
    # With explicit trust the same file loads (the payload is an ordinary object here).
    model = ckpt.load_detector(str(path), trusted=True)
    assert marker.exists()
    marker.unlink()
    monkeypatch.setenv("FSAF_TRUST_CHECKPOINT", "1")  # the environment's form of --trust-checkpoint
    ckpt.load_state_dict(str(path))
    assert marker.exists()
    assert model.bbox_head.retina_cls.weight.shape[0] == model_constants()["num_classes"]


@pytest.mark.skipif(ckpt.torch_has_weights_only_load(), reason="this torch has a weights-only unpickler")
def test_old_torch_warns_once(tmp_path, seeded_checkpoint):
    ckpt._WARNED_NO_SAFE_LOAD[:] = []
    with pytest.warns(RuntimeWarning, match="no weights-only unpickler"):
        ckpt.load_state_dict(seeded_checkpoint)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt.load_state_dict(seeded_checkpoint)  # said once, not again


def test_seeded_weights_are_deterministic_and_seed_dependent(seeded_checkpoint):
    first = _load_raw(seeded_checkpoint)["state_dict"]  # written with seed 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)  # the caller's thread count must not matter
    try:
        again = ckpt.seeded_state_dict(seed=0)
    finally:
        torch.set_num_threads(threads)
    other = ckpt.seeded_state_dict(seed=4)
    key = "bbox_head.retina_cls.weight"
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first[key], other[key])
    # Every bias is non-zero, so a loader that dropped biases would be caught by parity tests.
    assert all(float(v.abs().sum()) > 0 for k, v in first.items() if k.endswith(".bias"))


def test_seeded_weights_give_many_candidates_per_image(seeded_detector):
    height, width = UNIT_INPUT_HW
    images = generated_inputs(11, 3, height, width)
    with torch.no_grad():
        cls_scores, bbox_preds = seeded_detector(images)
    counts = count_candidates(cls_scores, bbox_preds, (height, width))
    assert min(counts) >= 100, counts
    scores = torch.cat([c.sigmoid().flatten() for c in cls_scores])
    # Scores spread over (0.05, 1) without saturating, so score order is well defined.
    assert float(scores.max()) < 0.99


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out.pth"

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise pickle.PicklingError("simulated failure")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(pickle.PicklingError):
        ckpt.save_checkpoint({"a": torch.zeros(1)}, str(target))
    assert os.listdir(str(tmp_path)) == []


def test_file_sha256_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "x.bin"
    payload = np.arange(1000, dtype=np.uint8).tobytes()
    path.write_bytes(payload)
    assert ckpt.file_sha256(str(path)) == hashlib.sha256(payload).hexdigest()
