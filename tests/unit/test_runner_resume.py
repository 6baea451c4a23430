"""Resuming `infer` (issue 9): options that change no finished batch keep the run's identity, and a
finished batch is reused only while the image bytes it read are still there.

Each test proves what was recomputed with a recording backend (the null backend's echo, which gives
each image a result computed from its pixels, plus a fingerprint of every image it was handed), and
compares the final results json byte for byte with an uninterrupted run's.
"""
import hashlib
import json
import os
import shutil

import pytest

from fsaf_repro import backends, cli, runner
from fsaf_repro.data import CocoImageSet, iter_batches
from fsaf_repro.errors import DataError, ImageReadError, JournalMismatch
from fsaf_repro.synthetic import make_synthetic_coco

H, W = 64, 96
NUM_IMAGES = 12
BATCH = 2
BAD = 5  # the index of the image made unreadable: in the third batch, [4, 6)
CHANGED = 6  # a JPEG in the fourth batch, [6, 8)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_synthetic_coco(str(tmp_path_factory.mktemp("syn")), num_images=NUM_IMAGES, seed=11)


@pytest.fixture
def dataset(source, tmp_path):
    """A private copy of the images (the tests change them) with the source's annotation file."""
    images = tmp_path / "images"
    shutil.copytree(source[1], str(images))
    return source[0], str(images)


def image_set(dataset):
    return CocoImageSet(dataset[0], dataset[1], height=H, width=W)


def fingerprint(image):
    return hashlib.sha256(image.tobytes()).hexdigest()


class Recording(backends.Backend):
    """The echo backend, noting a fingerprint of every image it runs."""

    name = "null"

    def __init__(self):
        super().__init__()
        self.model_path = "<no model>"
        self.inner = backends.create_backend("null", detections="echo").load()
        self.seen = []

    def run(self, batch, image_hw=None):
        self.seen.extend(fingerprint(image) for image in batch)
        return self.inner.run(batch)

    def indices_seen(self, dataset):
        """The entries of the image set whose transformed pixels the backend ran, in run order."""
        images, by_print = image_set(dataset), {}
        for index in range(NUM_IMAGES):
            try:
                by_print[fingerprint(images.load(index)[0])] = index
            except ImageReadError:
                continue  # the broken image: never handed to a backend
        return [by_print[p] for p in self.seen]


def infer(dataset, out, backend=None, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("batch_size", BATCH)
    kwargs.setdefault("backend_name", "null")  # the Recording runs as the null backend it wraps
    return runner.infer_dataset(image_set(dataset), backend or Recording(), str(out), **kwargs)


def read_bytes(path):
    with open(str(path), "rb") as handle:
        return handle.read()


def journal_lines(out):
    with open(str(out) + ".journal") as handle:
        return [json.loads(line) for line in handle]


def break_image(dataset, index):
    """Replace image `index` with bytes no decoder takes; returns its path and original bytes."""
    path = image_set(dataset).metas[index].path
    original = read_bytes(path)
    with open(path, "wb") as handle:
        handle.write(b"this is not an image")
    return path, original


def restore(path, data):
    with open(path, "wb") as handle:
        handle.write(data)


def change_jpeg_same_size(path):
    """Raise the JPEG's first DC quantisation step by one: other pixels, the same byte size (and
    the same mtime, set back: only the content tells)."""
    data = bytearray(read_bytes(path))
    stat = os.stat(path)
    dqt = data.index(b"\xff\xdb")
    dc = dqt + 5  # marker (2), length (2), precision/table id (1), then the 64 steps in zigzag order
    data[dc] = data[dc] + 1 if data[dc] < 200 else data[dc] - 1
    restore(path, bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.path.getsize(path) == stat.st_size


def test_resumed_with_skip_bad_keeps_the_finished_batches(dataset, tmp_path):
    """The advice of the error ("add --skip-bad") is followed: the batches before the bad image stay."""
    reference = tmp_path / "reference.json"
    break_image(dataset, BAD)
    infer(dataset, reference, skip_bad=True)  # uninterrupted

    out = tmp_path / "r.json"
    first = Recording()
    with pytest.raises(ImageReadError, match="--skip-bad") as info:
        infer(dataset, out, backend=first)
    assert image_set(dataset).metas[BAD].file_name in str(info.value)
    assert first.indices_seen(dataset) == [0, 1, 2, 3]

    resumed = Recording()
    summary = infer(dataset, out, backend=resumed, skip_bad=True)
    assert resumed.indices_seen(dataset) == [4] + list(range(BAD + 1, NUM_IMAGES))  # 0-3 not run again
    assert summary["reused_images"] == 4 and summary["redone_batches"] == 0
    assert [s["index"] for s in summary["skipped"]] == [BAD]
    assert read_bytes(out) == read_bytes(reference)
    assert read_bytes(str(out) + ".skipped.json") == read_bytes(str(reference) + ".skipped.json")


def test_cli_resume_with_skip_bad_as_the_error_advises(dataset, tmp_path, capsys):
    out = tmp_path / "r.json"
    break_image(dataset, BAD)
    argv = ["infer", "--annotations", dataset[0], "--images", dataset[1], "--height", str(H), "--width", str(W),
            "--backend", "null", "--backend-option", "detections=echo", "--batch-size", str(BATCH),
            "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert "--skip-bad" in error and "Traceback" not in error
    assert cli.main(argv + ["--skip-bad", "--workers", "1", "--prefetch", "3"]) == 0
    printed = capsys.readouterr().out
    assert "4 images reused from the journal" in printed and "skipped:" in printed


def test_a_batch_that_skipped_an_image_is_redone_without_skip_bad(dataset, tmp_path):
    reference = tmp_path / "reference.json"
    infer(dataset, reference)  # every image good, uninterrupted

    out = tmp_path / "r.json"
    path, original = break_image(dataset, BAD)
    infer(dataset, out, skip_bad=True, keep_journal=True)
    # lines: [0,2) [2,4) [4,7) with 5 skipped, [7,9) [9,11) [11,12)
    assert [(e["first"], e["next"]) for e in journal_lines(out)[1:]][2] == (4, 7)

    strict = Recording()
    with pytest.raises(ImageReadError) as info:  # the run without --skip-bad stops on the bad image
        infer(dataset, out, backend=strict, keep_journal=True)
    assert path in str(info.value)
    assert strict.indices_seen(dataset) == []

    restore(path, original)  # the image fixed: only the batch that skipped it runs again
    fixed = Recording()
    summary = infer(dataset, out, backend=fixed)
    assert fixed.indices_seen(dataset) == [4, 5, 6]  # the batch's entries [4, 7), as two batches
    assert summary["skipped"] == [] and not os.path.exists(str(out) + ".skipped.json")
    assert summary["reused_images"] == NUM_IMAGES - 3
    assert read_bytes(out) == read_bytes(reference)


def test_a_changed_image_redoes_its_batch_and_nothing_else(dataset, tmp_path):
    out = tmp_path / "r.json"
    infer(dataset, out, keep_journal=True)
    before = json.loads(read_bytes(out).decode("utf-8"))
    meta = image_set(dataset).metas[CHANGED]
    change_jpeg_same_size(meta.path)

    again = Recording()
    summary = infer(dataset, out, backend=again, keep_journal=True)
    assert again.indices_seen(dataset) == [6, 7]  # its batch, [6, 8)
    assert summary["redone_batches"] == 1 and summary["reused_images"] == NUM_IMAGES - 2
    fresh = tmp_path / "fresh.json"
    infer(dataset, fresh)
    assert read_bytes(out) == read_bytes(fresh)  # the later line for [6, 8) supersedes the first, in place
    after = json.loads(read_bytes(out).decode("utf-8"))
    changed = [r for r in after if r["image_id"] == meta.image_id]
    assert changed and changed != [r for r in before if r["image_id"] == meta.image_id]  # the new pixels count

    idle = Recording()  # nothing changed since: everything is reused
    summary = infer(dataset, out, backend=idle)
    assert idle.seen == [] and summary["reused_images"] == NUM_IMAGES and summary["redone_batches"] == 0
    assert read_bytes(out) == read_bytes(fresh)


def test_an_image_broken_after_its_batch_finished_is_not_hidden_by_the_journal(dataset, tmp_path):
    out = tmp_path / "r.json"
    infer(dataset, out, keep_journal=True)
    path = image_set(dataset).metas[CHANGED].path
    data = read_bytes(path)
    restore(path, data[:len(data) // 2])  # truncated
    again = Recording()
    with pytest.raises(ImageReadError) as info:
        infer(dataset, out, backend=again)
    assert path in str(info.value) and "truncated" in str(info.value)
    assert "the 10 images of the finished batches are kept" in str(info.value)
    assert again.indices_seen(dataset) == []


@pytest.mark.parametrize("changed", [
    {"workers": 3}, {"workers": 1}, {"prefetch": 5}, {"progress": True}, {"skip_bad": True},
    {"workers": 1, "prefetch": 1, "progress": True, "skip_bad": True},
])
def test_options_that_change_no_result_keep_the_run_identity(dataset, tmp_path, changed):
    reference = tmp_path / "reference.json"
    infer(dataset, reference)
    out = tmp_path / "r.json"
    infer(dataset, out, keep_journal=True, workers=2, prefetch=2)
    journal = str(out) + ".journal"
    with open(journal) as handle:
        lines = handle.readlines()
    with open(journal, "w") as handle:
        handle.writelines(lines[:4])  # killed after three batches
    os.remove(str(out))
    resumed = Recording()
    summary = infer(dataset, out, backend=resumed, **changed)
    assert summary["reused_images"] == 6 and resumed.indices_seen(dataset) == list(range(6, NUM_IMAGES))
    assert read_bytes(out) == read_bytes(reference)


def test_the_identity_leaves_out_the_skip_policy_and_keeps_what_decides_results(dataset):
    fields = runner.run_key_fields(image_set(dataset), "null", {}, None, BATCH, "float32")
    assert "skip_bad" not in fields and "workers" not in fields and "prefetch" not in fields
    assert fields["batch_size"] == BATCH and fields["format"] == runner.JOURNAL_FORMAT


@pytest.mark.parametrize("section, field", [("model", "score_threshold"), ("input", "mean_rgb"),
                                            ("coco_category_ids", None)])
def test_the_identity_covers_the_spec_sections_infer_reads(dataset, section, field):
    import copy

    from fsaf_repro.spec import load_recipe_spec, spec_override
    recipe = copy.deepcopy(dict(load_recipe_spec()))
    images = image_set(dataset)  # read under the packaged spec (the annotation check uses its categories)
    before = runner.run_key_fields(images, "null", {}, None, BATCH, "float32")
    if field == "score_threshold":
        recipe[section][field] = recipe[section][field] * 2
    elif field == "mean_rgb":
        recipe[section][field] = [value + 1.0 for value in recipe[section][field]]
    else:
        recipe[section] = list(reversed(recipe[section]))
    with spec_override(recipe):
        after = runner.run_key_fields(images, "null", {}, None, BATCH, "float32")
    assert after["spec"][section] != before["spec"][section]
    assert dict(after, spec=None) == dict(before, spec=None)  # nothing else moved


def test_a_journal_without_image_digests_is_refused_naming_it_and_restart(dataset, tmp_path):
    out = tmp_path / "r.json"
    infer(dataset, out, keep_journal=True)
    journal = str(out) + ".journal"
    lines = journal_lines(out)
    header = lines[0]
    header["fields"]["format"] = 1  # as the previous version wrote it: batch lines without digests
    old_lines = [header] + [{"next": e["next"], "image_ids": e["image_ids"], "results": e["results"],
                             "skipped": e["skipped"]} for e in lines[1:]]
    with open(journal, "w") as handle:
        handle.write("".join(json.dumps(line) + "\n" for line in old_lines))
    with pytest.raises(JournalMismatch) as info:
        infer(dataset, out)
    message = str(info.value)
    assert journal in message and "--restart" in message and "format 1" in message
    assert infer(dataset, out, restart=True)["reused_images"] == 0


def test_the_loader_hands_the_runner_the_digest_of_the_bytes_it_read_and_stops_at_stop(dataset):
    images = image_set(dataset)
    path, _ = break_image(dataset, BAD)
    stream = iter_batches(images, BATCH, skip_bad=True, start=3, stop=8, hash_images=True)
    ids = [m.image_id for _, metas in stream for m in metas]
    assert ids == [images.metas[i].image_id for i in (3, 4, 6, 7)]  # [3, 8) less the bad one
    expected = dict((i, hashlib.sha256(read_bytes(images.metas[i].path)).hexdigest()) for i in range(3, 8))
    assert stream.image_sha256 == expected  # the undecodable file's bytes too
    assert [s.index for s in stream.skipped] == [BAD]
    os.remove(path)
    gone = iter_batches(images, BATCH, skip_bad=True, start=4, stop=6, hash_images=True)
    assert [m.image_id for _, metas in gone for m in metas] == [images.metas[4].image_id]
    assert sorted(gone.image_sha256) == [4]  # a file that cannot be read has no digest (None in the journal)
    with pytest.raises(DataError, match="stop must be between start"):
        iter_batches(images, BATCH, start=5, stop=4)
