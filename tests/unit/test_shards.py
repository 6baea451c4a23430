"""Sharded inference (issue 20): the split, the parts' merge, and `infer --devices` on simulated devices.

The results of a sharded run must be the bytes of a one-device run, also after a shard was killed and
resumed; a set of parts with an image missing or given twice is refused, naming the images.
"""
import hashlib
import json
import os

import pytest

from fsaf_repro import backends, cli, runner, shards
from fsaf_repro.data import CocoImageSet
from fsaf_repro.errors import JournalMismatch, OptionError, ResultsError
from fsaf_repro.options import DEVICE_IDS, SHARD
from fsaf_repro.synthetic import make_synthetic_coco
from tests.support import fake_om
from tests.unit.fake_tools import install_fake_tools

H, W = 16, 24
NUM_IMAGES = 16
BATCH = 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_coco(str(tmp_path_factory.mktemp("syn")), num_images=NUM_IMAGES, seed=5)


def image_set(dataset):
    return CocoImageSet(dataset[0], dataset[1], height=H, width=W)


def echo_infer(dataset, out, **kwargs):
    backend = backends.create_backend("null", detections="echo").load()
    return runner.infer_dataset(image_set(dataset), backend, str(out), batch_size=BATCH, progress=False,
                                backend_name="null", backend_options={"detections": "echo"}, **kwargs)


def digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_shard_ranges_cover_the_set_once_on_batch_boundaries():
    for total, count, batch in ((16, 4, 2), (17, 3, 4), (5, 5, 1), (5000, 7, 8)):
        ranges = [shards.shard_range(total, i, count, batch) for i in range(count)]
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(first % batch == 0 and first < end for first, end in ranges)
    with pytest.raises(OptionError, match="at most 3 shards"):
        shards.shard_range(6, 0, 4, 2)
    assert SHARD("2/4") == (2, 4) and DEVICE_IDS("0,1,3") == [0, 1, 3]
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(OptionError, match="i/n"):
            SHARD(bad)
    for bad in ("0,0", "", "0,-1", "x"):
        with pytest.raises(OptionError):
            DEVICE_IDS(bad)


def test_merged_parts_are_the_bytes_of_a_one_device_run(dataset, tmp_path):
    echo_infer(dataset, tmp_path / "whole.json")
    parts = [str(tmp_path / f"part{i}.json") for i in range(3)]
    for i, part in enumerate(parts):
        summary = echo_infer(dataset, part, shard=(i, 3))
        assert summary["entries"] == list(shards.shard_range(NUM_IMAGES, i, 3, BATCH))
    merged = tmp_path / "merged.json"
    assert cli.main(["merge", parts[2], parts[0], parts[1], "--out", str(merged)]) == 0  # any order
    assert digest(merged) == digest(tmp_path / "whole.json")
    with open(merged) as handle:
        assert {d["image_id"] for d in json.load(handle)} == set(image_set(dataset).image_ids)


def test_merge_refuses_a_missing_or_doubled_shard_naming_the_images(dataset, tmp_path, capsys):
    parts = [str(tmp_path / f"part{i}.json") for i in range(4)]
    for i, part in enumerate(parts):
        echo_infer(dataset, part, shard=(i, 4))
    ids = image_set(dataset).image_ids
    first, end = shards.shard_range(NUM_IMAGES, 1, 4, BATCH)
    shard1_ids = ", ".join(str(i) for i in ids[first:end])
    with pytest.raises(ResultsError, match=f"{end - first} image\\(s\\) in no part: ids {shard1_ids}$"):
        shards.merge_parts([parts[0], parts[2], parts[3]], str(tmp_path / "merged.json"))
    with pytest.raises(ResultsError, match=f"in more than one part: ids {shard1_ids} \\(first: id {ids[first]} "
                                           "in shards 1/4 .*, 1/4 "):
        shards.merge_parts(parts + [parts[1]], str(tmp_path / "merged.json"))
    assert not os.path.exists(tmp_path / "merged.json")
    # through the command line: one line naming the images
    assert cli.main(["merge", parts[0], parts[2], parts[3], "--out", str(tmp_path / "m.json")]) == 1
    assert f"in no part: ids {shard1_ids}" in capsys.readouterr().err


def test_merge_refuses_parts_of_other_runs_and_changed_results(dataset, tmp_path):
    parts = [str(tmp_path / f"part{i}.json") for i in range(2)]
    echo_infer(dataset, parts[0], shard=(0, 2))
    backend = backends.create_backend("null", detections="empty").load()
    runner.infer_dataset(image_set(dataset), backend, parts[1], batch_size=BATCH, progress=False,
                         backend_name="null", backend_options={"detections": "empty"}, shard=(1, 2))
    with pytest.raises(ResultsError, match="part of another run"):
        shards.merge_parts(parts, str(tmp_path / "merged.json"))
    echo_infer(dataset, parts[1], shard=(1, 2))
    with open(parts[1], "a") as handle:
        handle.write(" ")
    with pytest.raises(ResultsError, match="not the results file its shard record"):
        shards.merge_parts(parts, str(tmp_path / "merged.json"))
    with pytest.raises(ResultsError, match=r"\.shard\.json does not exist"):
        shards.merge_parts([str(tmp_path / "nothing.json")], str(tmp_path / "merged.json"))


def test_a_shard_journal_is_its_own(dataset, tmp_path):
    out = tmp_path / "part.json"
    echo_infer(dataset, out, shard=(0, 2), keep_journal=True)
    with pytest.raises(JournalMismatch, match="shard"):
        echo_infer(dataset, out, shard=(1, 2), keep_journal=True)


@pytest.mark.slow  # two worker processes, each importing the package
def test_cpu_workers_split_the_set_and_merge_to_the_one_process_bytes(dataset, tmp_path):
    common = ["infer", "--annotations", dataset[0], "--images", dataset[1], "--height", str(H), "--width", str(W),
              "--backend", "null", "--backend-option", "detections=echo", "--batch-size", str(BATCH),
              "--no-progress"]
    assert cli.main(common + ["--out", str(tmp_path / "one.json")]) == 0
    assert cli.main(common + ["--devices", "0,1", "--out", str(tmp_path / "two.json")]) == 0
    assert digest(tmp_path / "two.json") == digest(tmp_path / "one.json")
    assert not os.path.exists(str(tmp_path / "two.json") + ".parts")  # merged: the parts are gone


def make_om(tmp_path, batch_size):
    return fake_om(tmp_path, batch_size, "Ascend310P3", H, W)


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["benchmark"])
def test_four_simulated_devices_match_one_device_also_after_a_kill(dataset, tmp_path, monkeypatch, capsys, tool):
    install_fake_tools(tmp_path / "bin", monkeypatch)
    om = make_om(tmp_path, BATCH)
    (tmp_path / "work").mkdir()
    monkeypatch.setenv("FAKE_DEVICE_MS_PER_SAMPLE", "0=2,1=4,2=8,3=16")
    common = ["infer", "--annotations", dataset[0], "--images", dataset[1], "--height", str(H), "--width", str(W),
              "--backend", tool, "--model", om, "--no-progress", "--backend-option", f"workdir={tmp_path / 'work'}"]
    assert cli.main(common + ["--out", str(tmp_path / "one.json")]) == 0
    sharded = common + ["--devices", "0,1,2,3", "--keep-journal", "--out", str(tmp_path / "four.json")]
    # device 2's shard process is killed at its second batch (its first is journaled)
    calls = tmp_path / "calls"
    calls.mkdir()
    monkeypatch.setenv("FAKE_DEVICE_KILL", "2:2")
    monkeypatch.setenv("FAKE_DEVICE_CALLS_DIR", str(calls))
    capsys.readouterr()
    assert cli.main(sharded) == 1
    error = capsys.readouterr().err
    assert "npu device 2 (shard 2/4) failed (killed by signal 9" in error and "shard 0/4" not in error
    folder = str(tmp_path / "four.json") + ".parts"
    finished = sorted(name for name in os.listdir(folder) if name.endswith(".shard.json"))
    assert finished == [f"four.json.shard-{i}-of-4.json.shard.json" for i in (0, 1, 3)]
    assert not os.path.exists(tmp_path / "four.json")
    monkeypatch.delenv("FAKE_DEVICE_KILL")
    assert cli.main(sharded) == 0
    assert digest(tmp_path / "four.json") == digest(tmp_path / "one.json")
    with open(os.path.join(folder, "four.json.shard-2-of-4.json.log")) as handle:
        # the resumed shard reused the batch journaled before the kill
        assert "(2 images reused from the journal, 2 run now)" in handle.read()
