"""Each reproduce stage's reuse key covers what the stage reads (issue 9), checked on the plan (issue 17).

Change one input of one stage - a parameter, an input file's content (same size), a spec section it
reads, its implementation version - and exactly that stage and the stages downstream of it get a new
key; every other stage keeps its key, so the stage book reuses it. Which stage consumes which is
written below from the pipeline's design (not read from the code's declarations), so a declaration that
leaves something out fails here.

The keys are computed from the plan alone (`plan_keys`), with input files from outside the run digested
by their bytes, in milliseconds; that the stage book re-runs a stage whose key moved, and only that one,
is checked on its own below ("the mechanism itself"). The end-to-end checks on a real run (reuse of an
unchanged rerun, a modified output detected) use the session's tiny run (tests/conftest.py `tiny_run`).

Two configurations, at the tiny run's sizes, with ONNX Runtime as the one data-set backend (torch still
runs the parity batch as the reference):
- "embedded": seeded checkpoint and generated set, so the checkpoint and dataset stages exist;
- "given": a checkpoint file and a generated COCO folder passed as --checkpoint / --coco-root, files
  from outside the run whose bytes can change under it.
"""
import contextlib
import copy
import hashlib
import json
import os
import re
import shutil

import pytest

from fsaf_repro.data import file_sha256
from fsaf_repro.errors import DataError, FsafReproError
from fsaf_repro.reproduce import run_reproduce
from fsaf_repro.reproduce_config import HostProbes, resolve_config
from fsaf_repro.reproduce_execute import plan_keys
from fsaf_repro.reproduce_options import ReproduceOptions
from fsaf_repro.reproduce_plan import RunState, plan
from fsaf_repro.spec import load_recipe_spec, parity_tolerances, spec_override
from fsaf_repro.stagebook import STAGE_VERSIONS, Stage, StageBook, stage_key
from tests.conftest import tiny_run_options
from tests.support import citations_edited

PLAN_OPTIONS = dict(height=128, width=192, num_images=6, batch_sizes="1,2", parity_images=2, perf_loops=1,
                    perf_warmup=0, perf_min_seconds=0, threads=1, perf_threads=1, echo=False, environ={}, fit_steps=0,
                    backends="onnxruntime", npu_present=False)
CPU_HOST = HostProbes(atc=None, unavailable={})

# What each stage's outputs feed, directly (the pipeline's design, module docstring of reproduce).
FEEDS = {
    "checkpoint": ["export", "parity"],  # torch is the parity reference side
    "dataset": ["data"],
    "export": ["infer:onnxruntime", "perf:onnxruntime", "parity"],
    "convert": ["infer:benchmark", "perf:benchmark", "parity"],
    "data": ["infer:onnxruntime", "infer:benchmark", "evaluate:onnxruntime", "evaluate:benchmark", "parity"],
    "infer:onnxruntime": ["results:onnxruntime"],
    "results:onnxruntime": ["evaluate:onnxruntime"],
    "infer:benchmark": ["results:benchmark"],
    "results:benchmark": ["evaluate:benchmark"],
}


def affected(changed, present):
    """The changed stages and everything downstream of them, among the stages of the run."""
    todo, seen = list(changed), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(FEEDS.get(name, []))
    seen.add("report")  # the report reads every stage's record
    return seen & set(present)


# ------------------------------------------------------------------------------------------------
# Keys of a plan


def _digest(path):
    """A file's bytes when it exists; a file the run itself makes (a model, an om) does not exist before
    the run and is keyed through its producing stage's key, so its path stands in for it here."""
    if os.path.isfile(str(path)):
        return file_sha256(path)
    return hashlib.sha256(("made by the run: " + str(path)).encode("utf-8")).hexdigest()


def _keys(config, probes=CPU_HOST, results=None):
    state = RunState(config)
    state.results.update(results or {})
    return plan_keys(plan(config, probes), state, digest=_digest)


def _moved(before, after):
    assert set(before) == set(after)
    return set(name for name in before if before[name] != after[name])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The files each configuration reads before its first stage: the embedded run's generated set (what
    its dataset stage writes), the given run's checkpoint and COCO folder."""
    from fsaf_repro.synthetic import make_synthetic_coco
    root = tmp_path_factory.mktemp("keys")
    embedded = resolve_config(ReproduceOptions(run_dir=str(root / "embedded" / "run"), **PLAN_OPTIONS))
    make_synthetic_coco(embedded.data_root, num_images=PLAN_OPTIONS["num_images"], seed=embedded.seed)
    given = root / "given"
    given.mkdir()
    (given / "weights.pth").write_bytes(os.urandom(4096))  # digested, never loaded, by a plan
    make_synthetic_coco(str(given / "coco"), num_images=PLAN_OPTIONS["num_images"], seed=0)
    return {"embedded": str(root / "embedded"), "given": str(given)}


@contextlib.contextmanager
def _dataset_as_written_under_this_spec(inputs):
    """The embedded run's generated set as its dataset stage would write it under the spec in force (the
    category ids are the spec's), for the block; the module's set back afterwards."""
    from fsaf_repro.synthetic import make_synthetic_coco
    config = _config(inputs, "embedded")
    data_root = config.data_root
    aside = data_root + ".aside"
    os.rename(data_root, aside)
    try:
        make_synthetic_coco(data_root, num_images=PLAN_OPTIONS["num_images"], seed=config.seed)
        yield
    finally:
        shutil.rmtree(data_root, ignore_errors=True)
        os.rename(aside, data_root)


def _config(inputs, which, **changes):
    options = dict(PLAN_OPTIONS, run_dir=os.path.join(inputs[which], "run"))
    if which == "given":
        options.update(checkpoint=os.path.join(inputs["given"], "weights.pth"),
                       coco_root=os.path.join(inputs["given"], "coco"))
    options.update(changes)
    return resolve_config(ReproduceOptions(**options))


def _spec_with(path, value):
    """A deep copy of the packaged spec with the value at `path` (section, key, ...) replaced."""
    recipe = copy.deepcopy(dict(load_recipe_spec()))
    node = recipe
    for key in path[:-1]:
        node = node[key]
    assert node[path[-1]] != value, "the case must change the spec"
    node[path[-1]] = value
    return recipe


# ------------------------------------------------------------------------------------------------
# Changes to the stages of the embedded run

EMBEDDED_STAGES = ("checkpoint", "dataset", "export", "data", "infer:onnxruntime", "results:onnxruntime",
                   "evaluate:onnxruntime", "perf:onnxruntime", "parity", "report")


def _max_dets_200():
    evaluation = copy.deepcopy(load_recipe_spec()["evaluation"])
    evaluation["max_dets"] = [100 if d == 100 else 200 if d == 300 else d for d in evaluation["max_dets"]]
    for stat in evaluation["stats"]:
        stat["max_dets"] = 200 if stat["max_dets"] == 300 else stat["max_dets"]
    return evaluation


def _swapped_category_ids():
    ids = list(load_recipe_spec()["coco_category_ids"])
    ids[0], ids[1] = ids[1], ids[0]
    return ids


def _lower_first_gate():
    gates = copy.deepcopy(load_recipe_spec()["performance"]["gates"])
    gates[0]["min_ratio"] = gates[0]["min_ratio"] - 0.1
    return gates


# (case id, stages whose own input changes, the change: ("param", options) | ("spec", path, value))
EMBEDDED_CASES = [
    ("dataset-param-num-images", ["dataset"], ("param", {"num_images": 5})),
    ("data-param-limit", ["data"], ("param", {"limit": 5})),
    ("infer-param-batch-size", ["infer:onnxruntime"], ("param", {"infer_batch_size": 2})),
    ("results-param-score-threshold", ["results:onnxruntime"], ("param", {"score_threshold": 0.3})),
    ("evaluate-param-scorer", ["evaluate:onnxruntime"], ("param", {"scorer": "faster-coco-eval"})),
    ("perf-param-loops", ["perf:onnxruntime"], ("param", {"perf_loops": 2})),
    ("parity-param-images", ["parity"], ("param", {"parity_images": 1})),
    # The model's score threshold: baked into the exported NMS graphs and the checkpoint's meta, used
    # by the backends' decoding and, as the default of --score-threshold, by the results stage.
    ("spec-model-score-threshold", ["checkpoint", "export", "infer:onnxruntime", "results:onnxruntime",
                                    "perf:onnxruntime", "parity"], ("spec", ("model", "score_threshold"), 0.06)),
    ("spec-category-ids", ["dataset", "data", "report"], ("spec", ("coco_category_ids",), _swapped_category_ids())),
    ("spec-evaluation-max-dets", ["evaluate:onnxruntime"], ("spec", ("evaluation",), _max_dets_200())),
    ("spec-parity-match-iou", ["parity"], ("spec", ("parity", "match_iou"), 0.98)),
    ("spec-parity-fp16-tolerance", ["parity"], ("spec", ("parity", "fp16_om_box_abs_tol_px"), 1.0)),
    ("spec-performance-gate", ["report"], ("spec", ("performance", "gates"), _lower_first_gate())),
] + [("version-" + name, [name], ("version", name)) for name in EMBEDDED_STAGES]


@pytest.mark.parametrize("case", EMBEDDED_CASES, ids=[c[0] for c in EMBEDDED_CASES])
def test_a_changed_input_moves_the_keys_of_its_stage_and_those_downstream(inputs, monkeypatch, case):
    _, changed, change = case
    before = _keys(_config(inputs, "embedded"))
    assert set(before) == set(EMBEDDED_STAGES)
    if change[0] == "param":
        after = _keys(_config(inputs, "embedded", **change[1]))
    elif change[0] == "spec":
        with spec_override(_spec_with(change[1], change[2])), _dataset_as_written_under_this_spec(inputs):
            after = _keys(_config(inputs, "embedded"))
    else:
        base = change[1].partition(":")[0]
        monkeypatch.setitem(STAGE_VERSIONS, base, STAGE_VERSIONS[base] + 1)
        after = _keys(_config(inputs, "embedded"))
    assert _moved(before, after) == affected(changed, EMBEDDED_STAGES)


def test_a_citation_only_spec_edit_reruns_nothing(inputs):
    # every `source` (and `_about`, `*_source`, `*_note`) text of the spec changed, no value: the keys
    # hash values only, so no stage of either configuration gets a new key
    recipe = copy.deepcopy(dict(load_recipe_spec()))
    edited = citations_edited(recipe)
    assert edited["model"]["source"] != recipe["model"]["source"]
    assert edited["parity"]["fp16_om_source"] != recipe["parity"]["fp16_om_source"]
    for which in ("embedded", "given"):
        before = _keys(_config(inputs, which))
        with spec_override(edited):
            after = _keys(_config(inputs, which))
        assert after == before, which


def test_the_same_inputs_give_the_same_keys(inputs):
    # (the cases above are not vacuous: an unchanged plan keeps every key, on either configuration)
    for which in ("embedded", "given"):
        assert _keys(_config(inputs, which)) == _keys(_config(inputs, which)), which


def test_the_changed_spec_values_reach_the_outputs(tiny_run_copy):
    # end to end: the evaluation settings and tolerances the keys cover are the ones the stages used
    root = tiny_run_copy
    evaluation = _max_dets_200()
    recipe = _spec_with(("evaluation",), evaluation)
    recipe["parity"]["match_iou"] = 0.98
    with spec_override(recipe):
        run_reproduce(ReproduceOptions(run_dir=root, **tiny_run_options()))
    with open(os.path.join(root, "metrics_onnxruntime.json")) as handle:
        assert json.load(handle)["max_dets"] == evaluation["max_dets"]
    with open(os.path.join(root, "parity.json")) as handle:
        assert json.load(handle)["tolerances"]["match_iou"] == 0.98
    with open(os.path.join(root, "logs", "reproduce.log")) as handle:
        log = handle.read()
    assert "re-running: parity (changed: spec section parity)" in log
    assert "re-running: evaluate:onnxruntime (changed: spec section evaluation)" in log


# ------------------------------------------------------------------------------------------------
# Input files from outside the run: their bytes change, their size does not


def _replace_checkpoint(root):
    """Other bytes of the same size (a plan digests the checkpoint, it does not load it)."""
    def rewrite(path):
        with open(path, "rb") as handle:
            data = bytearray(handle.read())
        data[len(data) // 2] ^= 0xFF
        with open(path, "wb") as handle:
            handle.write(bytes(data))
    return os.path.join(root, "weights.pth"), rewrite

def _edit_annotation(root):
    """One object's area, one digit: a different file of the same size that is still valid COCO."""
    def rewrite(path):
        with open(path) as handle:
            text = handle.read()
        match = re.search(r'"area": ?(\d)', text)
        digit = "8" if match.group(1) == "9" else str(int(match.group(1)) + 1)
        with open(path, "w") as handle:
            handle.write(text[:match.start(1)] + digit + text[match.end(1):])
    return os.path.join(root, "coco", "annotations", "instances_val2017.json"), rewrite


def _repaint_first_image(root):
    """The first image by id (in the parity batch and drawn in the report): other pixels, same size,
    the JPEG padded to its old length with a comment segment."""
    with open(os.path.join(root, "coco", "annotations", "instances_val2017.json")) as handle:
        first = min(json.load(handle)["images"], key=lambda image: image["id"])
    assert first["file_name"].endswith(".jpg")
    return os.path.join(root, "coco", "val2017", first["file_name"]), _repaint_jpeg


def _repaint_jpeg(path):
    import cv2
    import numpy as np
    size = os.path.getsize(path)
    original = cv2.imread(path)
    image = original.copy()
    image[:64, :64] = 255 - image[:64, :64]
    for quality in (90, 80, 70, 60, 50):
        ok, encoded = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
        data = encoded.tobytes()
        if ok and len(data) + 4 <= size:
            break
    padding = size - len(data) - 4  # COM segment: FF FE, a 2-byte length counting itself, the bytes
    assert 0 <= padding <= 65533
    data = data[:2] + b"\xff\xfe" + (padding + 2).to_bytes(2, "big") + b"\0" * padding + data[2:]
    with open(path, "wb") as handle:
        handle.write(data)
    assert not np.array_equal(cv2.imread(path), original)


@contextlib.contextmanager
def _changed_in_place(path, rewrite):
    """`rewrite(path)` for the block, then the original file back (the baseline is shared)."""
    backup = path + ".original"
    shutil.copy2(path, backup)
    try:
        size = os.path.getsize(path)
        rewrite(path)
        with open(path, "rb") as new, open(backup, "rb") as old:
            assert new.read() != old.read()
        assert os.path.getsize(path) == size
        yield
    finally:
        os.replace(backup, path)


GIVEN_STAGES = ("export", "data", "infer:onnxruntime", "results:onnxruntime", "evaluate:onnxruntime",
                "perf:onnxruntime", "parity", "report")

# (case id, the change, {stage reading that file: the label it reads it under})
GIVEN_CASES = [
    ("checkpoint-file", _replace_checkpoint, {"export": "checkpoint", "parity": "model:torch"}),
    ("annotation-file", _edit_annotation, {"data": "annotation", "evaluate:onnxruntime": "annotation",
                                           "report": "annotation"}),
    ("image-file", _repaint_first_image, {"infer:onnxruntime": "images", "parity": "images", "report": "images"}),
]


@pytest.mark.parametrize("case", GIVEN_CASES, ids=[c[0] for c in GIVEN_CASES])
def test_an_input_file_changed_in_place_moves_the_keys_of_its_readers(inputs, case):
    _, change, readers = case
    config = _config(inputs, "given")
    before = _keys(config)
    assert set(before) == set(GIVEN_STAGES)
    with _changed_in_place(*change(inputs["given"])):
        after = _keys(config)
    assert _moved(before, after) == affected(readers, GIVEN_STAGES)
    assert _keys(config) == before  # the file restored, the keys are back: keyed by bytes, not by time


# ------------------------------------------------------------------------------------------------
# The om path: a host with atc and a soc version plans convert; its parameter and version move its key


def test_the_convert_key_moves_on_its_parameter_and_version(inputs, monkeypatch):
    host = HostProbes(atc="/opt/atc", unavailable={}, soc_version="Ascend310P3")
    present = EMBEDDED_STAGES + ("convert", "infer:benchmark", "results:benchmark", "evaluate:benchmark",
                                 "perf:benchmark")
    oms = {"convert": {"oms": dict((str(bs), f"om/fsaf_ascend-nms_bs{bs}.om") for bs in (1, 2))}}

    def keys(**changes):
        return _keys(_config(inputs, "embedded", backends="onnxruntime,benchmark", **changes), host, oms)

    before = keys()
    assert set(before) == set(present)
    assert keys() == before
    assert _moved(before, keys(precision_mode="allow_fp32_to_fp16")) == affected(["convert"], present)
    monkeypatch.setitem(STAGE_VERSIONS, "convert", STAGE_VERSIONS["convert"] + 1)
    assert _moved(before, keys()) == affected(["convert"], present)


# ------------------------------------------------------------------------------------------------
# The mechanism itself, on small stages


def _write(path, data):
    with open(str(path), "wb") as handle:
        handle.write(data)
    return str(path)


def _lines():
    lines = []
    return lines, lines.append


def test_the_key_covers_each_kind_of_declared_read_and_nothing_else(tmp_path):
    source = _write(tmp_path / "in.bin", b"abcd")

    def body(ctx):
        raise AssertionError("stage_key never runs the body")

    def declared(**changes):
        fields = dict(params={"threshold": 0.5}, inputs={"source": source}, spec=("parity",),
                      upstream=("export",), options={"progress": False})
        fields.update(changes)
        return Stage("evaluate:x", body, **fields)

    recipe = copy.deepcopy(dict(load_recipe_spec()))
    upstream = {"export": "1" * 64}
    key, fields = stage_key(declared(), recipe, upstream)
    assert set(fields) == {"params", "inputs", "spec", "upstream", "implementation"}
    assert stage_key(declared(), copy.deepcopy(recipe), dict(upstream))[0] == key  # deterministic
    # what is not declared does not move the key: options, and spec sections the stage does not read
    assert stage_key(declared(options={"progress": True}), recipe, upstream)[0] == key
    other_section = copy.deepcopy(recipe)
    other_section["evaluation"]["iou_type"] = "segm"
    assert stage_key(declared(), other_section, upstream)[0] == key
    # each kind of declared read does
    assert stage_key(declared(params={"threshold": 0.6}), recipe, upstream)[0] != key
    tolerance = copy.deepcopy(recipe)
    tolerance["parity"]["match_iou"] = parity_tolerances()["match_iou"] / 2
    assert stage_key(declared(), tolerance, upstream)[0] != key
    assert stage_key(declared(), recipe, {"export": "2" * 64})[0] != key
    _write(source, b"abce")  # same size, other bytes
    assert stage_key(declared(), recipe, upstream)[0] != key
    _write(source, b"abcd")
    assert stage_key(declared(), recipe, upstream)[0] == key
    bumped = declared()
    bumped.version += 1
    assert stage_key(bumped, recipe, upstream)[0] != key


def test_a_set_of_input_files_is_keyed_by_each_files_bytes(tmp_path):
    files = dict((name, _write(tmp_path / name, name.encode() * 3)) for name in ("a.jpg", "b.jpg"))
    stage = Stage("infer:x", None, inputs={"images": files})
    key = stage_key(stage, {}, {})[0]
    _write(files["b.jpg"], b"b.jpgb.jpgb.jpX")
    assert stage_key(stage, {}, {})[0] != key


def test_a_missing_input_file_is_an_error_naming_it_and_the_stage(tmp_path):
    missing = str(tmp_path / "absent.onnx")
    with pytest.raises(DataError, match=r"absent\.onnx.*input 'model' of the reproduce stage perf:x"):
        stage_key(Stage("perf:x", None, inputs={"model": missing}), {}, {})


def test_an_upstream_stage_that_did_not_run_is_refused():
    with pytest.raises(FsafReproError, match="consumes stage export, which has not run"):
        stage_key(Stage("infer:x", None, upstream=("export",)), {}, {})


def test_a_stage_version_must_be_declared():
    with pytest.raises(FsafReproError, match="no implementation version"):
        Stage("nonesuch", None)


def test_the_body_sees_its_declared_sections_and_an_undeclared_read_is_refused(tmp_path):
    lines, log = _lines()
    book = StageBook(str(tmp_path), log)
    out = str(tmp_path / "parity.json")
    seen = {}

    def declared_body(ctx):
        seen["sections"] = sorted(ctx.spec)
        _write(out, json.dumps(ctx.spec["parity"]).encode())
        return {}, [out]

    book.run(Stage("parity", declared_body, spec=("parity",)))
    assert seen["sections"] == ["parity"]
    assert book.status["parity"] == "ran"

    def sneaky_body(ctx):
        parity_tolerances()  # a read behind the stage's back, as a library function would do
        _write(out, b"{}")
        return {}, [out]

    with pytest.raises(FsafReproError, match=r"stage parity read the spec section\(s\) parity without declaring"):
        StageBook(str(tmp_path), log).run(Stage("parity", sneaky_body, params={"undeclared": True}))
    with open(os.path.join(str(tmp_path), "stages.json")) as handle:
        assert "parity" not in json.load(handle)["stages"]  # nothing recorded for reuse


def test_a_rerun_names_what_changed(tmp_path):
    lines, log = _lines()
    out = str(tmp_path / "out.txt")

    def body(ctx):
        _write(out, str(ctx.params["n"]).encode())
        return {}, [out]

    StageBook(str(tmp_path), log).run(Stage("results:x", body, params={"n": 1}))
    StageBook(str(tmp_path), log).run(Stage("results:x", body, params={"n": 1}))
    StageBook(str(tmp_path), log).run(Stage("results:x", body, params={"n": 2}))
    assert lines[1].startswith("reused: results:x (key ")
    assert lines[2] == "re-running: results:x (changed: param n)"


def test_a_damaged_stage_book_is_kept_aside_and_its_stages_run_again(tmp_path):
    lines, log = _lines()
    out = str(tmp_path / "out.txt")
    runs = []

    def body(ctx):
        runs.append(1)
        _write(out, b"done")
        return {}, [out]

    StageBook(str(tmp_path), log).run(Stage("results:x", body, params={"n": 1}))
    path = os.path.join(str(tmp_path), "stages.json")
    with open(path, "r+b") as handle:
        handle.truncate(20)  # damage from outside (the book's own writes are atomic)
    with open(path, "rb") as handle:
        damaged = handle.read()
    book = StageBook(str(tmp_path), log)
    book.run(Stage("results:x", body, params={"n": 1}))
    assert len(runs) == 2 and book.status["results:x"] == "ran"
    kept = [n for n in os.listdir(str(tmp_path)) if n.startswith("stages.json.unreadable-")]
    assert len(kept) == 1
    with open(os.path.join(str(tmp_path), kept[0]), "rb") as handle:
        assert handle.read() == damaged
    with open(path) as handle:
        assert "results:x" in json.load(handle)["stages"]  # a readable book again
    assert any("is unreadable" in line for line in lines)
