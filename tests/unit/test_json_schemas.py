"""Issue 19 rule 3: every JSON the tool reads goes through one loader (fsaf_repro.jsonio) with a depth
limit and a schema; refusals are one typed line naming the file and the element."""
import json
import os

import pytest
import torch

from fsaf_repro import perf
from fsaf_repro.checkpoint import check_finite_weights
from fsaf_repro.convert import read_om_sidecar
from fsaf_repro.data import read_annotation_file, read_manifest
from fsaf_repro.errors import AnnotationError, CheckpointError, DataError, ExportError, ResultsError, ToolError
from fsaf_repro.evaluate import load_metrics
from fsaf_repro.export import read_sidecar
from fsaf_repro.jsonio import MAX_DEPTH, nesting_depth
from fsaf_repro.results_json import read_results_json
from fsaf_repro.stagebook import STAGES_FILE, StageBook

DEEP = "[" * 100000 + "]" * 100000

GOOD_RECORD = {"device": "host", "backend": "torch", "precision": "fp32", "batch_size": 1, "fps": 2.5,
               "latencies_ms": {"p50": 1.0}, "mode": "inference", "source": "measured: test"}


def _write(path, text):
    path.write_text(text)
    return str(path)


# every reader, and the typed error it raises
READERS = [
    ("results", read_results_json, ResultsError),
    ("annotations", read_annotation_file, AnnotationError),
    ("perf records", perf.load_records, ResultsError),
    ("manifest", read_manifest, DataError),
    ("metrics", load_metrics, ResultsError),
    ("om sidecar", lambda p: read_om_sidecar(p[:-len(".json")]), ToolError),
    ("export sidecar", lambda p: read_sidecar(p[:-len(".json")]), ExportError),
]


@pytest.mark.parametrize("name,reader,error", READERS, ids=[r[0] for r in READERS])
def test_deep_nesting_is_one_typed_line_naming_the_file(tmp_path, name, reader, error):
    path = _write(tmp_path / "deep.om.json", DEEP)
    with pytest.raises(error) as info:
        reader(path)
    message = str(info.value)
    assert path in message and "100000 levels deep" in message and "\n" not in message


def test_depth_ignores_brackets_inside_strings():
    assert nesting_depth(b'["' + b"[" * 100 + b'"]') == 1
    assert nesting_depth(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)) == MAX_DEPTH + 1


def test_a_boolean_category_id_in_results_is_refused(tmp_path):
    det = {"image_id": 1, "category_id": True, "bbox": [0, 0, 1, 1], "score": 0.5}
    path = _write(tmp_path / "r.json", json.dumps([det]))
    with pytest.raises(ResultsError, match=r"detection 0 .*integer image id and category id"):
        read_results_json(path)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_boxes_or_scores_in_results_are_refused(tmp_path, value):
    path = _write(tmp_path / "r.json", f'[{{"image_id": 1, "category_id": 1, "bbox": [0, 0, {value}, 1], '
                                       f'"score": 0.5}}]')
    with pytest.raises(ResultsError, match="detection 0 .*4 finite numbers"):
        read_results_json(path)


def test_a_number_where_text_belongs_in_a_perf_record_names_file_and_field(tmp_path):
    path = _write(tmp_path / "perf.json", json.dumps({"records": [GOOD_RECORD, dict(GOOD_RECORD, source=5)]}))
    with pytest.raises(ResultsError) as info:
        perf.load_records(path)
    assert f"perf records file {path}: record 1: source: must be text" in str(info.value)
    path = _write(tmp_path / "perf2.json", json.dumps([dict(GOOD_RECORD, batch_size=True)]))
    with pytest.raises(ResultsError, match="record 0: batch_size: must be an integer, got boolean"):
        perf.load_records(path)
    assert perf.load_records(_write(tmp_path / "ok.json", json.dumps([GOOD_RECORD])))[0]["chips"] == 1


def _manifest(scale):
    return {"annotation_sha256": "ab" * 32, "height": 64, "width": 96,
            "images": [{"image_id": 1, "file_name": "a.jpg", "path": "/x/a.jpg", "orig_w": 640, "orig_h": 480,
                        "scale": scale, "new_w": 85, "new_h": 64}]}


def test_a_manifest_whose_scale_contradicts_its_sizes_is_refused(tmp_path):
    # 640x480 on a 96x64 canvas: scale min(96/640, 64/480) = 0.1333..., resized 85x64
    good = _write(tmp_path / "good.json", json.dumps(_manifest(64 / 480)))
    assert read_manifest(good)["images"][0]["new_w"] == 85
    bad = _write(tmp_path / "bad.json", json.dumps(_manifest(64 / 480 / 2)))
    with pytest.raises(DataError) as info:
        read_manifest(bad)
    assert bad in str(info.value) and "images[0]: scale" in str(info.value) and "contradict" in str(info.value)


def test_non_finite_checkpoint_weights_are_refused_naming_the_tensor():
    state = {"a.weight": torch.zeros(3), "b.bias": torch.tensor([0.0, float("nan")]),
             "c.num_batches_tracked": torch.tensor(3)}
    with pytest.raises(CheckpointError, match="ckpt.pth: weight b.bias holds 1 non-finite"):
        check_finite_weights(state, "ckpt.pth")
    check_finite_weights({"a.weight": torch.ones(2)}, "ckpt.pth")  # finite: no error


@pytest.mark.parametrize("content", ['{"stages": []}', '{"stages": {"x": {"key": 5}}}', "[]", DEEP])
def test_a_stage_book_of_the_wrong_shape_is_moved_aside(tmp_path, content):
    path = tmp_path / STAGES_FILE
    path.write_text(content)
    logged = []
    book = StageBook(str(tmp_path), logged.append, recipe={})
    assert book.entries == {}
    assert not path.exists()
    kept = [name for name in os.listdir(str(tmp_path)) if name.startswith(STAGES_FILE + ".unreadable-")]
    assert len(kept) == 1 and (tmp_path / kept[0]).read_text() == content
    assert "stage book" in logged[0] and "kept as" in logged[0]


def test_metrics_with_a_string_stat_are_refused(tmp_path):
    path = _write(tmp_path / "m.json", json.dumps({"stats": [0.1, "0.2"]}))
    with pytest.raises(ResultsError, match=r"metrics file .*m.json: stats\[1\]: must be a number"):
        load_metrics(path)
