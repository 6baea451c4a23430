"""Issue 19: a fuzzer for every JSON reader. Each reader gets generated documents: a valid one with one
element replaced by a hostile value (wrong type, boolean for an int, text for a number, NaN, inf, huge
or negative numbers, empty containers) or removed, arbitrary JSON values, and deep nesting.

The property users need: a correct result, or a one-line FsafReproError naming the file; never another
exception, and never a changed input file.

Profiles: "fast" (30 examples per reader, the fast tier) and "long" (500 per reader, the slow-marked
test; FSAF_FUZZ_PROFILE=long also gives the fast test 500).
"""
import copy
import hashlib
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsaf_repro import perf, runner
from fsaf_repro.backends.ais_bench_cli import read_summary
from fsaf_repro.convert import read_om_sidecar
from fsaf_repro.data import read_annotation_file, read_bin_record, read_manifest
from fsaf_repro.data.bins import BIN_RECORD_NAME
from fsaf_repro.errors import FsafReproError
from fsaf_repro.evaluate import load_metrics
from fsaf_repro.export import read_sidecar
from fsaf_repro.locking import read_lock_record
from fsaf_repro.results_json import read_results_json
from fsaf_repro.stagebook import STAGES_FILE, StageBook

settings.register_profile("fast", max_examples=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = os.environ.get("FSAF_FUZZ_PROFILE", "fast")

DETECTION = {"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}
ANNOTATIONS = {"images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480}],
               "categories": [{"id": 1, "name": "person"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "area": 12.0}]}
PERF_RECORD = {"device": "host", "backend": "torch", "precision": "fp32", "batch_size": 1, "fps": 2.5,
               "latencies_ms": {"p50": 1.0}, "mode": "inference", "source": "measured: test", "chips": 1,
               "images": 6, "images_total": 6, "partial": False, "note": None}
MANIFEST = {"annotation_sha256": "ab" * 32, "height": 64, "width": 96,
            "images": [{"image_id": 1, "file_name": "a.jpg", "path": "/x/a.jpg", "orig_w": 640, "orig_h": 480,
                        "scale": 64 / 480, "new_w": 85, "new_h": 64}]}
SIDECAR = {"input": {"name": "input", "shape": [1, 3, 64, 96]}, "inputs": [], "batch_size": 1,
           "outputs": [{"name": "dets"}]}
STAGE_BOOK = {"format": 2, "stages": {"data": {"key": "k" * 64, "fields": {}, "result": {"images": 6},
                                               "outputs": {"a.bin": "d" * 64}, "seconds": 1.0}}}
JOURNAL_LINE = {"first": 0, "next": 1, "image_ids": [1], "image_sha256": ["e" * 64], "results": [DETECTION],
                "skipped": []}
SUMMARY = {"throughput": 100.0, "NPU_compute_time": {"mean": 1.0, "min": 0.5}}
BIN_RECORD_LINE = {"bin": "a.bin", "image_bytes": 10, "image_sha256": "f" * 64, "decoded": [640, 480],
                   "bin_bytes": 73728, "bin_mtime_ns": 1}


def _read_in_folder(reader, name):
    """A reader of one file named `name` in a folder (the readers that take a folder or a model path)."""
    def read(path):
        return reader(os.path.dirname(path))
    read.file_name = name
    return read


def _journal_line(path):
    with open(path, "rb") as handle:
        return runner._parse_entry(handle.read(), path, 2, 10)


def _stage_book(path):
    # a damaged stage book is moved aside (that is its correct result), so this reader works on a copy
    folder = os.path.join(os.path.dirname(path), "book")
    os.makedirs(folder, exist_ok=True)
    with open(path, "rb") as src, open(os.path.join(folder, STAGES_FILE), "wb") as dst:
        dst.write(src.read())
    book = StageBook(folder, lambda message: None, recipe={})
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    assert isinstance(book.entries, dict)
    return book.entries


def _bin_record(path):
    return read_bin_record(os.path.dirname(path), 64, 96)


# reader name -> (valid document, reader of a file path, file name)
READERS = {
    "results": ([DETECTION, dict(DETECTION, image_id=2)], read_results_json, "results.json"),
    "annotations": (ANNOTATIONS, lambda p: read_annotation_file(p, need_annotations=True), "instances.json"),
    "perf records": ({"records": [PERF_RECORD]}, perf.load_records, "perf.json"),
    "manifest": (MANIFEST, read_manifest, "preprocess_manifest.json"),
    "metrics": ({"stats": [0.1] * 12, "per_class": [{"name": "person", "ap": None}], "num_images": 1},
                load_metrics, "metrics.json"),
    "om sidecar": (SIDECAR, lambda p: read_om_sidecar(p[:-len(".json")]), "model.om.json"),
    "export sidecar": (SIDECAR, lambda p: read_sidecar(p[:-len(".json")]), "model.onnx.json"),
    "stage book": (STAGE_BOOK, _stage_book, "stages-input.json"),
    "journal line": (JOURNAL_LINE, _journal_line, "r.json.journal"),
    "ais_bench summary": (SUMMARY, read_summary, "run_summary.json"),
    "lock record": ({"pid": 1, "host": "h", "verb": "infer"}, read_lock_record, "out.lock"),
    "perf from ais_bench": (SUMMARY, lambda p: perf.parse_ais_bench_summary(p, "310P", 1), "summary.json"),
}

HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.sampled_from([0, -1, 10 ** 30, 1e308, float("nan"), float("inf"), -float("inf"), -0.0]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.sampled_from(["", "1", "NaN", "true", "../x"]), st.just([]), st.just({}),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20)


def _paths(value, prefix=()):
    """Every element's path in `value` (the root's is ())."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _paths(child, prefix + (key,))


@st.composite
def documents(draw, valid):
    """JSON text: the valid document with one element replaced or removed, any JSON value, or deep nesting."""
    kind = draw(st.sampled_from(["mutate", "mutate", "mutate", "any", "deep"]))
    if kind == "deep":
        depth = draw(st.integers(min_value=20, max_value=200000))
        return draw(st.sampled_from(["[", '{"a":'])) * depth
    if kind == "any":
        return json.dumps(draw(JSON_VALUES))
    document = copy.deepcopy(valid)
    path = draw(st.sampled_from(list(_paths(document))))
    if not path:
        return json.dumps(draw(HOSTILE))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(HOSTILE)
    return json.dumps(document)


def _check_reader(folder, name, text):
    valid, reader, file_name = READERS[name]
    path = os.path.join(folder, file_name)
    with open(path, "w") as handle:
        handle.write(text)
    with open(path, "rb") as handle:
        before = hashlib.sha256(handle.read()).hexdigest()
    try:
        reader(path)
    except FsafReproError as exc:
        message = str(exc)
        assert "\n" not in message, message
        assert path in message or file_name in message or os.path.dirname(path) in message, message
    with open(path, "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == before, "the reader changed its input file"


def _fuzz_test(profile):
    @pytest.mark.parametrize("name", sorted(READERS))
    def test(tmp_path_factory, name):
        folder = str(tmp_path_factory.mktemp("fuzz"))

        @settings(settings.get_profile(profile))
        @given(documents(READERS[name][0]))
        def run(text):
            _check_reader(folder, name, text)
        run()
    return test


def test_every_valid_document_is_read(tmp_path):
    """The fuzzer's seeds are themselves accepted, so a mutation's refusal is the mutation's doing."""
    for name, (valid, reader, file_name) in READERS.items():
        path = str(tmp_path / file_name)
        with open(path, "w") as handle:
            json.dump(valid, handle)
        if name == "lock record":
            assert reader(path)["pid"] == 1
        else:
            assert reader(path) is not None or name in ("om sidecar", "export sidecar"), name


def test_the_bin_record_reader_skips_hostile_lines(tmp_path):
    """The .bin record is JSON lines: a hostile line is skipped with a warning (its .bin is redone)."""
    path = tmp_path / BIN_RECORD_NAME
    header = {"format": 1, "transform": {}}
    path.write_text("\n".join([json.dumps(header), "[" * 100000, json.dumps(BIN_RECORD_LINE)]) + "\n")
    assert read_bin_record(str(tmp_path), 64, 96) == {}  # another transform: nothing reusable, no error


test_json_readers_fuzz_fast = _fuzz_test(PROFILE)
test_json_readers_fuzz_long = pytest.mark.slow(_fuzz_test("long"))
