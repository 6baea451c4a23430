"""Readers for network outputs and the detections -> COCO results conversion."""
import json
import os

import numpy as np
import pytest

from fsaf_repro import cli
from fsaf_repro.data import CocoImageSet
from fsaf_repro.errors import OutputFormatError
from fsaf_repro.postprocess import (detections_to_coco, read_ais_bench_outputs, read_ais_bench_summary,
                                    read_benchmark_outputs, read_npy_outputs, write_results_json)
from fsaf_repro.spec import coco_category_ids, model_constants
from fsaf_repro.synthetic import make_synthetic_coco

MAX_DETS = model_constants()["max_per_img"]


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path_factory.mktemp("coco")), num_images=5,
                                                     seed=9, write_images=False)
    return CocoImageSet(annotation_file, image_dir)


def _outputs(n, seed=0):
    rng = np.random.RandomState(seed)
    dets = np.zeros((n, MAX_DETS, 5), dtype=np.float32)
    labels = rng.randint(0, 80, size=(n, MAX_DETS)).astype(np.int64)
    for i in range(n):
        k = 10 + i  # valid rows, the rest is padding
        x1, y1 = rng.uniform(0, 600, size=(2, k)).astype(np.float32)
        dets[i, :k, 0], dets[i, :k, 1] = x1, y1
        dets[i, :k, 2], dets[i, :k, 3] = x1 + 50, y1 + 30
        dets[i, :k, 4] = np.sort(rng.uniform(0.05, 1.0, size=k))[::-1]
    return dets, labels


def _stem(meta):
    return os.path.splitext(meta.file_name)[0]


def test_benchmark_directory_round_trip_by_exact_stem(image_set, tmp_path):
    dets, labels = _outputs(len(image_set))
    for i, meta in enumerate(image_set.metas):
        dets[i].tofile(str(tmp_path / (_stem(meta) + "_1.bin")))
        labels[i].tofile(str(tmp_path / (_stem(meta) + "_2.bin")))
    # a decoy whose name ends like another image's file: a suffix glob would pick it up
    (dets[0] * 0 + 1).tofile(str(tmp_path / ("9" + _stem(image_set.metas[1]) + "_1.bin")))
    got_dets, got_labels = read_benchmark_outputs(str(tmp_path), image_set.metas, image_set.output_stems)
    assert np.array_equal(got_dets, dets) and np.array_equal(got_labels, labels)


def test_benchmark_wrong_size_or_missing_file_names_the_file(image_set, tmp_path):
    dets, labels = _outputs(len(image_set))
    for i, meta in enumerate(image_set.metas):
        dets[i].tofile(str(tmp_path / (_stem(meta) + "_1.bin")))
        labels[i].astype(np.int32).tofile(str(tmp_path / (_stem(meta) + "_2.bin")))  # int32: half size
    name = _stem(image_set.metas[0]) + "_2.bin"
    with pytest.raises(OutputFormatError, match=name + " has 400 bytes, expected 800"):
        read_benchmark_outputs(str(tmp_path), image_set.metas, image_set.output_stems)
    os.remove(str(tmp_path / (_stem(image_set.metas[0]) + "_1.bin")))
    with pytest.raises(OutputFormatError, match="missing output file .*" + _stem(image_set.metas[0]) + "_1.bin"):
        read_benchmark_outputs(str(tmp_path), image_set.metas, image_set.output_stems)


def test_ais_bench_bin_npy_and_batched(image_set, tmp_path):
    dets, labels = _outputs(len(image_set), seed=1)
    single, npy, batched = (tmp_path / "single"), (tmp_path / "npy"), (tmp_path / "b2")
    for d in (single, npy, batched):
        d.mkdir()
    for i, meta in enumerate(image_set.metas):
        dets[i].tofile(str(single / (_stem(meta) + "_0.bin")))
        labels[i].tofile(str(single / (_stem(meta) + "_1.bin")))
        np.save(str(npy / (_stem(meta) + "_0.npy")), dets[i:i + 1])
        np.save(str(npy / (_stem(meta) + "_1.npy")), labels[i:i + 1])
    for first in range(0, len(image_set), 2):
        stem = _stem(image_set.metas[first])
        chunk_dets, chunk_labels = dets[first:first + 2], labels[first:first + 2]
        if len(chunk_dets) < 2:  # the tool pads the last batch
            chunk_dets = np.concatenate([chunk_dets, np.zeros_like(chunk_dets)])
            chunk_labels = np.concatenate([chunk_labels, np.zeros_like(chunk_labels)])
        chunk_dets.tofile(str(batched / (stem + "_0.bin")))
        chunk_labels.tofile(str(batched / (stem + "_1.bin")))
    for directory, kwargs in ((single, {}), (npy, {"outfmt": "NPY"}), (batched, {"batch_size": 2})):
        got_dets, got_labels = read_ais_bench_outputs(str(directory), image_set.metas, image_set.output_stems, **kwargs)
        assert np.array_equal(got_dets, dets) and np.array_equal(got_labels, labels), directory
    with open(str(single / (_stem(image_set.metas[2]) + "_0.bin")), "ab") as handle:
        handle.write(b"\0" * 4)
    with pytest.raises(OutputFormatError, match=_stem(image_set.metas[2]) + "_0.bin has 2004 bytes"):
        read_ais_bench_outputs(str(single), image_set.metas, image_set.output_stems)


def test_ais_bench_summary(tmp_path):
    timing = {"min": 1.0, "max": 3.0, "mean": 2.0, "median": 2.0, "percentile(99%)": 2.9}
    summary = {"NPU_compute_time": timing, "H2D_latency": timing, "D2H_latency": timing,
               "throughput": 55.5, "filesinfo": {}}
    path = tmp_path / "2023_01_01-00_00_00_summary.json"
    path.write_text(json.dumps(summary))
    assert read_ais_bench_summary(str(tmp_path))["throughput"] == 55.5
    path.write_text(json.dumps({"NPU_compute_time": 3}))
    with pytest.raises(OutputFormatError, match="summary.json has no 'throughput'"):
        read_ais_bench_summary(str(path))


def test_stacked_npy(image_set, tmp_path):
    dets, labels = _outputs(len(image_set))
    np.save(str(tmp_path / "dets.npy"), dets)
    np.save(str(tmp_path / "labels.npy"), labels)
    got = read_npy_outputs(str(tmp_path / "dets.npy"), str(tmp_path / "labels.npy"), len(image_set))
    assert np.array_equal(got[0], dets)
    with pytest.raises(OutputFormatError, match="labels.npy holds 5 images, expected 6"):
        np.save(str(tmp_path / "dets6.npy"), np.concatenate([dets, dets[:1]]))
        read_npy_outputs(str(tmp_path / "dets6.npy"), str(tmp_path / "labels.npy"), 6)
    np.save(str(tmp_path / "labels32.npy"), labels.astype(np.int32))
    with pytest.raises(OutputFormatError, match="labels32.npy holds int32"):
        read_npy_outputs(str(tmp_path / "dets.npy"), str(tmp_path / "labels32.npy"), len(image_set))


def test_detections_to_coco_drops_padding_and_low_scores_and_undoes_the_scale(image_set):
    dets, labels = _outputs(len(image_set))
    dets[0, 3, 4] = 0.04  # below the default threshold
    results = detections_to_coco(dets, labels, image_set.metas, coco_category_ids())
    expected_rows = sum(10 + i for i in range(len(image_set))) - 1
    assert len(results) == expected_rows
    first = image_set.metas[0]
    row = dets[0, 0]
    r0 = results[0]
    assert r0["image_id"] == first.image_id
    assert r0["category_id"] == coco_category_ids()[labels[0, 0]]
    np.testing.assert_allclose(r0["bbox"], [row[0] / first.scale, row[1] / first.scale,
                                            (row[2] - row[0]) / first.scale, (row[3] - row[1]) / first.scale],
                               rtol=1e-6)
    assert r0["score"] == pytest.approx(float(row[4]))
    assert all(r["score"] >= model_constants()["score_threshold"] for r in results)
    everything = detections_to_coco(dets, labels, image_set.metas, coco_category_ids(), score_threshold=0.0)
    assert len(everything) == expected_rows + 1  # threshold 0 still drops the score-0 padding


def test_clipping_is_optional_and_off_by_default(image_set):
    dets = np.zeros((len(image_set), MAX_DETS, 5), dtype=np.float32)
    labels = np.zeros((len(image_set), MAX_DETS), dtype=np.int64)
    dets[:, 0] = [-10.0, -5.0, 5000.0, 5000.0, 0.9]
    plain = detections_to_coco(dets, labels, image_set.metas, coco_category_ids())
    assert plain[0]["bbox"][0] < 0
    clipped = detections_to_coco(dets, labels, image_set.metas, coco_category_ids(), clip=True)
    for res, meta in zip(clipped, image_set.metas):
        x, y, w, h = res["bbox"]
        assert (x, y) == (0.0, 0.0) and x + w == meta.orig_w and y + h == meta.orig_h


def test_bad_labels_and_shapes_are_errors(image_set):
    dets, labels = _outputs(len(image_set))
    labels[1, 0] = 80
    with pytest.raises(OutputFormatError, match="label 80 outside 0..79"):
        detections_to_coco(dets, labels, image_set.metas, coco_category_ids())
    with pytest.raises(OutputFormatError, match="records"):
        detections_to_coco(dets[:2], labels[:2], image_set.metas, coco_category_ids())


def test_write_results_json_is_atomic_and_valid(tmp_path):
    path = str(tmp_path / "sub" / "results.json")
    results = [{"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 1.0, 1.0], "score": 0.5}]
    write_results_json(path, results)
    with open(path) as handle:
        assert json.load(handle) == results
    assert os.listdir(str(tmp_path / "sub")) == ["results.json"]
    with pytest.raises(TypeError):
        write_results_json(path, [{"bad": object()}])
    with open(path) as handle:  # the earlier file is intact, no temporary left behind
        assert json.load(handle) == results
    assert os.listdir(str(tmp_path / "sub")) == ["results.json"]


def test_postprocess_cli_benchmark_dir_to_scored_results(tmp_path, capsys):
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path / "ds"), num_images=4, seed=2,
                                                     write_images=False)
    image_set = CocoImageSet(annotation_file, image_dir)
    with open(annotation_file) as handle:
        anns = json.load(handle)["annotations"]
    out = tmp_path / "dumpOutput_device0"
    out.mkdir()
    label_of = {cid: k for k, cid in enumerate(coco_category_ids())}
    for meta in image_set.metas:  # ground truth, expressed as the network would see it
        dets = np.zeros((MAX_DETS, 5), np.float32)
        labels = np.zeros(MAX_DETS, np.int64)
        mine = [a for a in anns if a["image_id"] == meta.image_id]
        for row, ann in enumerate(mine):
            x, y, w, h = ann["bbox"]
            dets[row] = [x * meta.scale, y * meta.scale, (x + w) * meta.scale, (y + h) * meta.scale, 1.0]
            labels[row] = label_of[ann["category_id"]]
        dets.tofile(str(out / (_stem(meta) + "_1.bin")))
        labels.tofile(str(out / (_stem(meta) + "_2.bin")))
    results = str(tmp_path / "results.json")
    assert cli.main(["postprocess", "--annotations", annotation_file, "--outputs", str(out),
                     "--results", results, "--evaluate"]) == 0
    printed = capsys.readouterr().out
    assert " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in printed
    with open(results) as handle:
        assert len(json.load(handle)) == len(anns)
