"""The recipe's steps 3.2 -> 4 -> 5 -> 6 through the command line, as a user on an NPU host runs them:
`convert` (atc), `preprocess` (.bin + info files), `perf --benchmark-info` (the benchmark tool over
the info file), `postprocess --manifest`, `evaluate`. The Ascend tools are the hermetic fakes; what
is tested is that the files each verb writes are the ones the next verb (and tool) reads, with each
image's own scale, an EXIF-rotated image included.

The fake benchmark tool answers each sample with one detection, box [k, k + 1, k + 10, k + 20],
score 0.75, label 7, where k is the sample's first input value (see tests/unit/fake_tools).
"""
import json
import os
import warnings

import numpy as np
import pytest

from fsaf_repro import cli
from fsaf_repro.data import CocoImageSet, ImageMeta
from fsaf_repro.spec import coco_category_ids
from fsaf_repro.synthetic import make_synthetic_coco
from tests.unit.fake_tools import install_fake_tools

H, W = 48, 64  # a reduced canvas: the formats and the scale arithmetic are those of 800x1216
FAKE_LABEL, FAKE_SCORE = 7, 0.75


def _rotate_by_exif(path, height, width):
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    rng = np.random.RandomState(1)
    Image.fromarray(rng.randint(0, 256, (height, width, 3)).astype(np.uint8)).save(
        path, exif=exif.tobytes(), quality=95)


def _fake_onnx(path):
    """An 'ONNX file' with the export sidecar that `convert` reads (the fake atc never parses it)."""
    with open(path, "wb") as handle:
        handle.write(b"onnx")
    with open(path + ".json", "w") as handle:
        json.dump({"flavour": "ascend-nms", "batch_size": "dynamic",
                   "input": {"name": "input", "shape": [1, 3, H, W], "dtype": "float32"}}, handle)


def _prepare(tmp_path, monkeypatch):
    """Steps 3.2 and 4: an om from the fake atc, and the .bin files of a set with a rotated image."""
    install_fake_tools(tmp_path / "bin", monkeypatch)
    monkeypatch.chdir(tmp_path)
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path / "coco"), num_images=5, seed=4)
    stored = CocoImageSet(annotation_file, image_dir).metas[2]
    _rotate_by_exif(stored.path, stored.orig_h, stored.orig_w)

    _fake_onnx(str(tmp_path / "fsaf.onnx"))
    assert cli.main(["convert", "fsaf.onnx", "--out-dir", "om", "--batch-sizes", "1",
                     "--soc-version", "Ascend310P3"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the EXIF rotation warning
        assert cli.main(["preprocess", "--annotations", annotation_file, "--images", image_dir,
                         "--out", "bins", "--bin-info", "fsaf.info", "--jpg-info", "fsaf_jpeg.info",
                         "--height", str(H), "--width", str(W), "--workers", "2", "--no-progress"]) == 0
    with open(str(tmp_path / "bins" / "preprocess_manifest.json")) as handle:
        manifest = json.load(handle)
    assert manifest["exif_rotated"] == [stored.image_id]
    return annotation_file, str(tmp_path / "om" / "fsaf_bs1.om"), manifest


def _postprocess_and_check(annotation_file, manifest, fmt, outputs):
    """Step 6: each result is the fake detection of its own .bin, undone by its own image's scale."""
    assert cli.main(["postprocess", "--annotations", annotation_file, "--manifest",
                     "bins/preprocess_manifest.json", "--format", fmt, "--outputs", outputs,
                     "--results", "results.json"]) == 0  # canvas from the manifest
    with open("results.json") as handle:
        results = json.load(handle)
    assert len(results) == len(manifest["images"])
    label_category = coco_category_ids()[FAKE_LABEL]
    for result, entry in zip(sorted(results, key=lambda r: r["image_id"]), manifest["images"]):
        meta = ImageMeta(**entry)
        k = float(np.fromfile(os.path.join("bins", os.path.splitext(meta.file_name)[0] + ".bin"),
                              np.float32, count=1)[0])
        assert result["image_id"] == meta.image_id and result["category_id"] == label_category
        assert result["score"] == pytest.approx(FAKE_SCORE)
        np.testing.assert_allclose(result["bbox"], [k / meta.scale, (k + 1) / meta.scale,
                                                    10 / meta.scale, 19 / meta.scale], rtol=1e-5, atol=1e-4)
    return results


def test_convert_preprocess_benchmark_postprocess_evaluate(tmp_path, monkeypatch, capsys):
    annotation_file, om, manifest = _prepare(tmp_path, monkeypatch)
    assert cli.main(["perf", "--benchmark-info", "fsaf.info", "--model", om, "--device", "310P",
                     "--workdir", "npu_run", "--out", "perf.json"]) == 0  # canvas from the om's sidecar
    outputs = str(tmp_path / "npu_run" / "result" / "dumpOutput_device0")
    assert len(os.listdir(outputs)) == 2 * 5
    _postprocess_and_check(annotation_file, manifest, "benchmark", outputs)

    capsys.readouterr()
    assert cli.main(["evaluate", "--annotations", annotation_file, "--results", "results.json",
                     "--metrics-out", "metrics.json", "--no-per-class"]) == 0
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in capsys.readouterr().out
    with open(str(tmp_path / "metrics.json")) as handle:
        metrics = json.load(handle)
    assert metrics["num_images"] == 5 and len(metrics["stats"]) == 12


def test_preprocess_ais_bench_over_the_bin_folder_postprocess(tmp_path, monkeypatch):
    """ais_bench reads the .bin folder itself (the manifest beside the .bin files is not an input)."""
    import subprocess
    annotation_file, om, manifest = _prepare(tmp_path, monkeypatch)
    inputs = sorted(n for n in os.listdir("bins") if n.endswith(".bin"))
    assert len(inputs) == 5
    # the fake, like ais_bench, takes only *.bin / *.npy from the folder
    subprocess.check_call(["ais_bench", "--model", om, "--input", "bins", "--output", "out",
                           "--output_dirname", "run", "--outfmt", "BIN", "--batchsize", "1"])
    _postprocess_and_check(annotation_file, manifest, "ais_bench", os.path.join("out", "run"))
