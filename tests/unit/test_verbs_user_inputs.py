"""Verbs that take what users have (issue 21): an image folder without annotations (`preprocess`,
`info`, `infer`), a model whose sidecar gives its canvas (`infer`, `perf`), an ONNX file where an om
is expected, `convert` without its tools, and `make-dataset` making the embedded default's set."""
import json
import os
import tempfile

import numpy as np
import pytest

from fsaf_repro import cli
from fsaf_repro.cli.dataset import embedded_default_command
from fsaf_repro.data import FOLDER_IMAGE_SUFFIXES, CocoImageSet, read_info_file, read_manifest
from fsaf_repro.errors import DataError, ToolError, ToolNotStarted
from fsaf_repro.spec import coco_category_ids, input_constants
from fsaf_repro.synthetic import make_synthetic_coco
from tests.support import UNIT_INPUT_HW

H, W = 48, 64  # a reduced canvas for the data verbs: the rules are those of 800x1216


def _write_image(path, width, height, seed):
    import cv2
    rng = np.random.RandomState(seed)
    assert cv2.imwrite(str(path), rng.randint(0, 256, (height, width, 3)).astype(np.uint8))


@pytest.fixture
def image_folder(tmp_path):
    """A bare folder as a user has it: images named out of creation order, of two formats and sizes,
    and a file that is not an image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    # created in this order; the file system may list them in any
    for seed, (name, size) in enumerate([("b.png", (40, 30)), ("C.jpg", (64, 48)), ("a.jpg", (30, 50))]):
        _write_image(folder / name, *size, seed=seed)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_a_bare_folder_is_a_set_with_ids_in_file_name_order(image_folder):
    image_set = CocoImageSet(None, str(image_folder), height=H, width=W)
    # code-point order: upper case sorts before lower case, as `LC_ALL=C ls` lists them
    assert [m.file_name for m in image_set.metas] == sorted(["b.png", "C.jpg", "a.jpg"]) == ["C.jpg", "a.jpg", "b.png"]
    assert image_set.image_ids == [1, 2, 3]
    assert [(m.orig_w, m.orig_h) for m in image_set.metas] == [(64, 48), (30, 50), (40, 30)]
    assert image_set.category_ids == coco_category_ids()
    assert image_set.annotation_file is None and str(image_folder) in image_set.source
    # a limit selects the first by id and does not change the others' names or the listing's digest
    limited = CocoImageSet(None, str(image_folder), limit=1, height=H, width=W)
    assert limited.image_ids == [1] and limited.output_stems == image_set.output_stems
    assert limited.annotation_sha256 == image_set.annotation_sha256
    assert set(FOLDER_IMAGE_SUFFIXES) >= {".jpg", ".png"}


def test_a_folder_without_images_is_refused_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="holds no image file"):
        CocoImageSet(None, str(tmp_path / "empty"))


def test_preprocess_and_info_take_a_bare_image_folder(image_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["preprocess", "--images", str(image_folder), "--out", "bins", "--height", str(H),
                     "--width", str(W), "--workers", "1", "--no-progress"]) == 0
    assert sorted(n for n in os.listdir("bins") if n.endswith(".bin")) == ["C.bin", "a.bin", "b.bin"]
    assert all(os.path.getsize(os.path.join("bins", n)) == 3 * H * W * 4 for n in ("C.bin", "a.bin", "b.bin"))
    bin_lines = read_info_file("fsaf.info")
    assert [(i, os.path.basename(p), w, h) for i, p, w, h in bin_lines] == [
        (0, "C.bin", W, H), (1, "a.bin", W, H), (2, "b.bin", W, H)]
    manifest = read_manifest(os.path.join("bins", "preprocess_manifest.json"))
    assert manifest["annotation_file"] is None and [m["image_id"] for m in manifest["images"]] == [1, 2, 3]

    # info on the same folder gives the same lines, and the jpg info the images' own sizes
    assert cli.main(["info", "--images", str(image_folder), "--bin-dir", "bins", "--bin-info", "again.info",
                     "--jpg-info", "jpeg.info", "--height", str(H), "--width", str(W)]) == 0
    assert read_info_file("again.info") == bin_lines
    assert [(os.path.basename(p), w, h) for _, p, w, h in read_info_file("jpeg.info")] == [
        ("C.jpg", 64, 48), ("a.jpg", 30, 50), ("b.png", 40, 30)]


def test_infer_runs_an_image_folder_at_its_models_exported_canvas(image_folder, tmp_path, export_cache,
                                                                   monkeypatch):
    height, width = UNIT_INPUT_HW
    assert (height, width) != (input_constants()["height"], input_constants()["width"])
    model = export_cache("onnx-nms", height, width)
    monkeypatch.chdir(tmp_path)
    # no --annotations, no --height/--width: the folder's images at the canvas the sidecar records
    assert cli.main(["infer", "--images", str(image_folder), "--model", model, "--out", "results.json",
                     "--no-progress", "--backend-option", "threads=1"]) == 0
    with open("results.json") as handle:
        results = json.load(handle)
    assert isinstance(results, list)
    assert {r["image_id"] for r in results} <= {1, 2, 3}


def _fake_model(path, kind, height, width, dtype="float32"):
    """A model file with the sidecar its exporter or converter writes (enough of it for the readers)."""
    path = str(path)
    with open(path, "wb") as handle:
        handle.write(b"model")
    exported = {"flavour": "onnx-nms", "batch_size": "dynamic",
                "input": {"name": "input", "shape": ["batch", 3, height, width], "dtype": dtype}}
    sidecar = exported if kind == "onnx" else {
        "om": os.path.basename(path), "tool": "atc", "batch_size": 1,
        "input": {"name": "input", "shape": [1, 3, height, width], "format": "NCHW"}, "onnx_sidecar": exported}
    with open(path + ".json", "w") as handle:
        json.dump(sidecar, handle)
    return path


@pytest.mark.parametrize("verb", ["infer", "perf"])
@pytest.mark.parametrize("kind", ["onnx", "om"])
def test_a_size_that_contradicts_the_sidecar_is_refused_in_one_line(verb, kind, image_folder, tmp_path, capsys):
    model = _fake_model(tmp_path / f"fsaf.{kind}", kind, 64, 96)
    backend = "onnxruntime" if kind == "onnx" else "benchmark"
    argv = {"infer": ["infer", "--images", str(image_folder), "--out", str(tmp_path / "r.json")],
            "perf": ["perf"]}[verb] + ["--backend", backend, "--model", model, "--height", "800"]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "--height 800 contradicts" in error and model + ".json" in error and "64x96" in error
    assert not os.path.exists(tmp_path / "r.json")


def test_an_agreeing_size_and_the_sidecar_give_the_same_input(tmp_path):
    from fsaf_repro.cli.model_input import model_input
    model = _fake_model(tmp_path / "fsaf.om", "om", 64, 96, dtype="uint8")
    assert model_input(model, None, None, None)[:3] == (64, 96, "uint8")
    assert model_input(model, 64, 96, "uint8")[:3] == (64, 96, "uint8")
    # no sidecar (a checkpoint): the options, else the recipe's canvas and float32
    assert model_input(str(tmp_path / "w.pth"), None, 40, None)[:3] == (input_constants()["height"], 40, "float32")


def test_perf_on_an_onnx_file_says_it_is_not_an_om(tmp_path, capsys):
    model = _fake_model(tmp_path / "fsaf.onnx", "onnx", 64, 96)
    info = tmp_path / "fsaf.info"
    info.write_text("0 x.bin 96 64\n")
    assert cli.main(["perf", "--benchmark-info", str(info), "--model", model, "--batch-size", "1",
                     "--workdir", str(tmp_path / "work")]) == 1
    error = capsys.readouterr().err
    assert "is an exported ONNX model" in error and "rebuild the om" not in error
    # the om backends read it the same way
    from fsaf_repro.convert import read_om_sidecar
    with pytest.raises(ToolError, match="not an om"):
        read_om_sidecar(model)


def test_convert_leaves_no_scratch_when_atc_is_absent(tmp_path, monkeypatch, capsys):
    model = _fake_model(tmp_path / "fsaf.onnx", "onnx", 64, 96)
    empty_path = tmp_path / "no-tools"
    empty_path.mkdir()
    monkeypatch.setenv("PATH", str(empty_path))
    out = tmp_path / "om"
    assert cli.main(["convert", model, "--out-dir", str(out), "--batch-sizes", "1,4",
                     "--soc-version", "Ascend310P3"]) == 1
    error = capsys.readouterr().err
    assert "not found on PATH" in error and "scratch directory kept" not in error
    assert [n for n in os.listdir(out) if n.startswith(".")] == []
    # nor without npu-smi (the soc version is asked of it first), here or in the temporary folder
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.mkdir(tmp_path / "tmp")
    from fsaf_repro.convert import detect_soc_version
    with pytest.raises(ToolNotStarted, match="npu-smi"):
        detect_soc_version("npu-smi")
    assert cli.main(["convert", model, "--out-dir", str(out), "--batch-sizes", "1"]) == 1
    assert "npu-smi" in capsys.readouterr().err
    assert [n for n in os.listdir(out) if n.startswith(".")] == []
    assert os.listdir(tmp_path / "tmp") == []


def test_a_tool_that_never_started_is_its_own_error(tmp_path):
    from fsaf_repro.tools import run_tool
    with pytest.raises(ToolNotStarted):
        run_tool([str(tmp_path / "absent-tool")], cwd=str(tmp_path), log_path=str(tmp_path / "t.log"))
    assert issubclass(ToolNotStarted, ToolError)  # every caller that handles ToolError still does


@pytest.mark.parametrize("weights", ["fitted", "seeded"])
def test_make_dataset_makes_the_set_the_embedded_default_evaluates(weights, tmp_path, monkeypatch):
    from fsaf_repro.reproduce import HostProbes, plan, resolve_config
    config = resolve_config(run_dir=str(tmp_path / "run"), environ={}, fit_steps=None if weights == "fitted" else 0)
    dataset = next(s for s in plan(config, HostProbes(atc=None)) if s.name == "dataset")
    # the set the dataset stage makes (fsaf_repro.stages.run_dataset: make_synthetic_coco with its params)
    made = make_synthetic_coco(str(tmp_path / "stage"), **dataset.params)
    # and the command make-dataset's help prints, run as a user runs it
    assert cli.main(["make-dataset", "--out", str(tmp_path / "cli")] + embedded_default_command(weights).split()) == 0
    with open(made[0], "rb") as stage_file, open(tmp_path / "cli" / "annotations" / "instances_val2017.json",
                                                  "rb") as cli_file:
        assert cli_file.read() == stage_file.read()
    names = sorted(os.listdir(made[1]))
    assert names == sorted(os.listdir(tmp_path / "cli" / "val2017"))
    for name in names[:3]:
        with open(os.path.join(made[1], name), "rb") as a, open(tmp_path / "cli" / "val2017" / name, "rb") as b:
            assert a.read() == b.read()


def test_perf_measures_a_model_at_its_exported_canvas(tmp_path, export_cache):
    height, width = UNIT_INPUT_HW
    model = export_cache("onnx-nms", height, width)
    out = str(tmp_path / "perf.json")
    # no --height/--width: the recipe's 800x1216 would fail inside ONNX Runtime on this 256x320 export
    assert cli.main(["perf", "--backend", "onnxruntime", "--model", model, "--loops", "1", "--warmup", "0",
                     "--threads", "1", "--out", out]) == 0
    with open(out) as handle:
        records = json.load(handle)
    records = records["records"] if isinstance(records, dict) else records
    assert [r["batch_size"] for r in records] == [1] and records[0]["fps"] > 0


@pytest.mark.parametrize("verb", ["infer", "perf"])
@pytest.mark.parametrize("backend, kind, wants", [("benchmark", "onnx", "an om"), ("onnxruntime", "om", "an ONNX"),
                                                  ("torch", "onnx", "a checkpoint")])
def test_a_model_of_another_kind_than_the_backend_runs_is_refused_naming_its_sidecar(verb, backend, kind, wants,
                                                                                    image_folder, tmp_path, capsys):
    model = _fake_model(tmp_path / f"fsaf.{kind}", kind, 64, 96)
    argv = {"infer": ["infer", "--images", str(image_folder), "--out", str(tmp_path / "r.json")],
            "perf": ["perf"]}[verb] + ["--backend", backend, "--model", model]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert f"--backend {backend} runs {wants}" in error and f"{model}.json says its model is a {kind} file" in error


def test_the_recipe_chain_runs_on_a_bare_image_folder(image_folder, tmp_path, monkeypatch, capsys):
    """Steps 3.2 -> 4.2 -> 5 -> 6 with the fake Ascend tools and no annotation file: the results name the
    folder's ids, each box undone by its own image's scale."""
    from fsaf_repro.data import ImageMeta
    from tests.unit.fake_tools import install_fake_tools
    install_fake_tools(tmp_path / "bin", monkeypatch)
    monkeypatch.chdir(tmp_path)
    model = _fake_model(str(tmp_path / "fsaf.onnx"), "onnx", H, W)
    assert cli.main(["convert", model, "--out-dir", "om", "--batch-sizes", "1", "--soc-version", "Ascend310P3"]) == 0
    assert cli.main(["preprocess", "--images", str(image_folder), "--out", "bins", "--height", str(H),
                     "--width", str(W), "--workers", "1", "--no-progress"]) == 0
    assert cli.main(["perf", "--benchmark-info", "fsaf.info", "--model", os.path.join("om", "fsaf_bs1.om"),
                     "--device", "310P", "--workdir", "npu_run"]) == 0
    outputs = os.path.join("npu_run", "result", "dumpOutput_device0")
    capsys.readouterr()
    assert cli.main(["postprocess", "--images", str(image_folder), "--manifest", "bins/preprocess_manifest.json",
                     "--outputs", outputs, "--results", "results.json", "--evaluate"]) == 1
    assert "--evaluate needs --annotations" in capsys.readouterr().err
    assert cli.main(["postprocess", "--images", str(image_folder), "--manifest", "bins/preprocess_manifest.json",
                     "--outputs", outputs, "--results", "results.json"]) == 0
    with open("results.json") as handle:
        results = sorted(json.load(handle), key=lambda r: r["image_id"])
    manifest = read_manifest(os.path.join("bins", "preprocess_manifest.json"))
    assert [r["image_id"] for r in results] == [1, 2, 3]
    for result, entry in zip(results, manifest["images"]):
        meta = ImageMeta(**entry)
        # the fake benchmark's box starts at the sample's first input value k (tests/unit/fake_tools)
        k = float(np.fromfile(os.path.join("bins", os.path.splitext(meta.file_name)[0] + ".bin"), np.float32,
                              count=1)[0])
        np.testing.assert_allclose(result["bbox"][:2], [k / meta.scale, (k + 1) / meta.scale], rtol=1e-5, atol=1e-4)
