"""The streaming runner: results, padding, per-image failures and resume after a kill."""
import json
import os
import random
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from fsaf_repro import backends, runner
from fsaf_repro.data import CocoImageSet
from fsaf_repro.errors import BackendError, ImageReadError, ResultsError
from fsaf_repro.synthetic import make_synthetic_coco

H, W = 64, 96
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_coco(str(tmp_path_factory.mktemp("syn")), num_images=30, seed=3)


def image_set(dataset, **kwargs):
    return CocoImageSet(dataset[0], dataset[1], height=H, width=W, **kwargs)


def echo(**options):
    return backends.create_backend("null", detections="echo", **options).load()


def infer(dataset, out, backend=None, **kwargs):
    kwargs.setdefault("progress", False)
    return runner.infer_dataset(image_set(dataset), backend or echo(), str(out), **kwargs)


def read(path):
    with open(str(path)) as handle:
        return json.load(handle)


def test_every_image_gets_its_own_result(dataset, tmp_path):
    summary = infer(dataset, tmp_path / "not" / "yet" / "r.json", batch_size=4)  # folders are created
    results = read(tmp_path / "not" / "yet" / "r.json")
    ids = image_set(dataset).image_ids
    assert [r["image_id"] for r in results] == ids  # echo: one detection per image, in image-id order
    assert summary["images"] == 30 and summary["detections"] == 30 and not summary["skipped"]
    assert not os.path.exists(str(tmp_path / "not" / "yet" / "r.json.journal"))
    modes = [r["mode"] for r in summary["records"]]
    assert modes == ["e2e", "inference"]


def test_static_batch_pads_the_last_batch_and_discards_the_padding(dataset, tmp_path):
    infer(dataset, tmp_path / "dynamic.json", batch_size=1)

    class Recording(backends.Backend):
        name = "recording"

        def __init__(self):
            super().__init__()
            self.model_path, self.batch_size = "<recording>", 4
            self.inner = echo(batch_size=4)
            self.sizes = []

        def run(self, batch, image_hw=None):
            self.sizes.append(batch.shape[0])
            return self.inner.run(batch)

    recording = Recording()
    infer(dataset, tmp_path / "static.json", backend=recording)
    assert recording.sizes == [4] * 8  # 30 images: 7 full batches and one padded from 2 to 4
    assert read(tmp_path / "static.json") == read(tmp_path / "dynamic.json")
    with pytest.raises(BackendError, match="static batch size of 4; run with batch size 4"):
        infer(dataset, tmp_path / "x.json", backend=echo(batch_size=4), batch_size=3)


def test_uint8_runs_pass_each_image_size(dataset, tmp_path):
    seen = []

    class Uint8(backends.Backend):
        name = "uint8"

        def __init__(self):
            super().__init__()
            self.model_path, self.batch_size = "<uint8>", 4

        def run(self, batch, image_hw=None):
            assert batch.dtype == np.uint8
            seen.append(np.array(image_hw))
            return backends.base.empty_outputs(batch.shape[0])

    infer(dataset, tmp_path / "u.json", backend=Uint8(), input_dtype="uint8")
    metas = image_set(dataset).metas
    hw = np.concatenate(seen)
    np.testing.assert_array_equal(hw[:30], [[m.new_h, m.new_w] for m in metas])
    np.testing.assert_array_equal(hw[30:], [[H, W], [H, W]])  # the padding rows


@pytest.fixture
def broken_dataset(dataset, tmp_path):
    """A copy of the dataset's json pointing at a directory where image 5 is corrupt."""
    images = tmp_path / "images"
    images.mkdir()
    names = sorted(os.listdir(dataset[1]))
    metas = image_set(dataset).metas
    for name in names:
        # copies, not symlinks: an image whose link leads out of --images is refused (issue 9)
        shutil.copy(os.path.join(dataset[1], name), str(images / name))
    bad = metas[5]
    os.remove(str(images / bad.file_name))
    (images / bad.file_name).write_bytes(b"this is not an image")
    return dataset[0], str(images), bad


def test_unreadable_image_stops_with_its_name_and_keeps_done_work(broken_dataset, tmp_path):
    out = tmp_path / "r.json"
    with pytest.raises(ImageReadError) as info:
        infer(broken_dataset, out, batch_size=2)
    message = str(info.value)
    assert broken_dataset[2].file_name in message and "--skip-bad" in message
    with open(str(out) + ".journal") as handle:
        entries = [json.loads(line) for line in handle][1:]
    assert sum(len(e["image_ids"]) for e in entries) == 4  # batches before the bad image are kept


def test_skip_bad_lists_the_skipped_image(broken_dataset, dataset, tmp_path):
    infer(dataset, tmp_path / "ref.json", batch_size=2)
    summary = infer(broken_dataset, tmp_path / "r.json", batch_size=2, skip_bad=True)
    bad = broken_dataset[2]
    assert [s["image_id"] for s in summary["skipped"]] == [bad.image_id]
    assert bad.file_name in summary["skipped"][0]["path"]
    assert read(str(tmp_path / "r.json") + ".skipped.json") == summary["skipped"]
    expected = [r for r in read(tmp_path / "ref.json") if r["image_id"] != bad.image_id]
    assert read(tmp_path / "r.json") == expected


def test_journal_of_other_arguments_is_refused(dataset, tmp_path):
    out = tmp_path / "r.json"
    infer(dataset, out, batch_size=2, keep_journal=True)
    with pytest.raises(ResultsError, match="batch_size"):
        infer(dataset, out, batch_size=3)
    infer(dataset, out, batch_size=3, restart=True)
    assert len(read(out)) == 30


def test_a_torn_last_journal_line_is_dropped(dataset, tmp_path):
    ref = tmp_path / "ref.json"
    infer(dataset, ref, batch_size=4)
    out = tmp_path / "r.json"
    infer(dataset, out, batch_size=4, keep_journal=True)
    journal = str(out) + ".journal"
    with open(journal) as handle:
        lines = handle.readlines()
    with open(journal, "w") as handle:
        handle.writelines(lines[:4])
        handle.write(lines[4][:17])  # the run was killed while writing this line
    os.remove(str(out))
    summary = infer(dataset, out, batch_size=4)
    assert summary["resumed_from"] == 12 and summary["images_this_session"] == 18
    with open(str(ref), "rb") as a, open(str(out), "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("damage,problem", [
    ('{"next": 8, "image_ids": [4, 5, 6, 7], "resul', "not valid JSON"),  # two writers interleaved
    ('{"next": 8}', "not a batch record"),
    ('[1, 2, 3]', "not a batch record"),
])
def test_a_journal_line_damaged_in_the_middle_is_named_and_kept(dataset, tmp_path, damage, problem):
    out = tmp_path / "r.json"
    infer(dataset, out, batch_size=4, keep_journal=True)
    journal = str(out) + ".journal"
    with open(journal) as handle:
        lines = handle.readlines()
    lines[2] = damage + "\n"  # line 3 of the file; complete lines follow it
    with open(journal, "w") as handle:
        handle.writelines(lines)
    with open(journal, "rb") as handle:
        damaged = handle.read()
    with pytest.raises(ResultsError) as info:
        infer(dataset, out, batch_size=4)
    message = str(info.value)
    assert f"journal {journal} line 3 is damaged" in message and problem in message
    assert "--restart" in message
    with open(journal, "rb") as handle:
        assert handle.read() == damaged  # nothing is thrown away behind the user's back
    summary = infer(dataset, out, batch_size=4, restart=True)  # the way out the message names
    assert summary["resumed_from"] == 0 and summary["images"] == 30


def test_a_journal_header_that_is_not_an_object_is_named(dataset, tmp_path):
    out = tmp_path / "r.json"
    with open(str(out) + ".journal", "w") as handle:
        handle.write("[]\n")
    with pytest.raises(ResultsError, match="line 1 is not a journal header"):
        infer(dataset, out, batch_size=4)


def cli_args(dataset, out):
    return [sys.executable, "-m", "fsaf_repro", "infer", "--annotations", dataset[0], "--images", dataset[1],
            "--height", str(H), "--width", str(W), "--backend", "null", "--backend-option", "detections=echo",
            "--backend-option", "delay_s=0.03", "--batch-size", "2", "--out", str(out), "--no-progress"]


def _start(dataset, out, env, cwd):
    return subprocess.Popen(cli_args(dataset, out), env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _kill(proc):
    proc.kill()
    proc.wait()


@pytest.mark.slow  # the end-to-end resume check (processes killed mid-run): full tier
def test_killed_runs_resume_to_identical_results(dataset, tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    cwd = str(tmp_path)
    ref = tmp_path / "ref.json"
    subprocess.check_call(cli_args(dataset, ref), env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    with open(str(ref), "rb") as handle:
        expected = handle.read()
    rng = random.Random(20261125)
    for attempt in range(2):
        out = tmp_path / f"killed_{attempt}.json"
        journal = str(out) + ".journal"
        # kill 1: at a random moment once batches are being journaled (mid-run, maybe mid-write)
        proc = _start(dataset, out, env, cwd)
        while not os.path.exists(journal) and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        _kill(proc)
        assert proc.returncode != 0, "the run finished before it could be killed; raise delay_s"
        with open(journal) as handle:
            journaled = len(handle.read().split("\n")) - 2  # header, then complete batch lines
        # kill 2: at any moment of the resumed run, from start-up to the final write
        proc = _start(dataset, out, env, cwd)
        time.sleep(rng.uniform(0.05, 2.5))
        _kill(proc)
        # then run to completion
        proc = _start(dataset, out, env, cwd)
        assert proc.wait(timeout=120) == 0
        with open(str(out), "rb") as handle:
            assert handle.read() == expected, f"attempt {attempt} (first kill after {journaled} batches)"


def test_backend_options_parse():
    from fsaf_repro.cli.args import parse_backend_options
    assert parse_backend_options(["threads=2", "allow_spinning=false", "device=cpu"]) == {
        "threads": 2, "allow_spinning": False, "device": "cpu"}
    with pytest.raises(Exception, match="KEY=VALUE"):
        parse_backend_options(["threads"])


@pytest.mark.parametrize("count", [0, 1, 3])
def test_streamed_results_json_has_the_bytes_of_postprocess_writer(tmp_path, count):
    from fsaf_repro.postprocess import write_results_json
    results = [{"image_id": 7 + i, "category_id": 90, "bbox": [0.1 * i, 2.0, 3.25, 1e-7], "score": 0.05 + i / 3.0}
               for i in range(count)]
    write_results_json(str(tmp_path / "a.json"), results)
    assert runner.write_results_streaming(str(tmp_path / "b.json"), iter(results)) == count
    with open(str(tmp_path / "a.json"), "rb") as a, open(str(tmp_path / "b.json"), "rb") as b:
        assert a.read() == b.read()
