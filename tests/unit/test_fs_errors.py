"""Ordinary file-system errors are one-line refusals naming the path, before any work.

Every verb that reads or writes user paths is driven through the command line with each kind of
bad path: an output under a regular file, a folder where a file is expected (and the reverse), a
missing input, a read-only output folder and an unreadable input. Each must exit 1 with one line
naming the path, no traceback, and nothing written. The permission cases run in a child process
without the capabilities that let root ignore permission bits (as an ordinary user would run).
"""
import ctypes
import json
import os
import stat
import subprocess
import sys

import pytest

from fsaf_repro import cli
from fsaf_repro.fileio import atomic_write_text, new_temp_file
from fsaf_repro.synthetic import make_synthetic_coco

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Each verb's argv with one path left open ({}), the other paths valid; the path's role: an output
# file or folder, an input file or folder, or an input that may be either.
OUTPUT_CASES = [
    ("infer --out", "file", lambda p, o: ["infer", "--annotations", p["ann"], "--images", p["img"],
                                          "--backend", "null", "--out", o]),
    ("preprocess --out", "dir", lambda p, o: ["preprocess", "--annotations", p["ann"], "--images", p["img"],
                                              "--out", o]),
    ("make-checkpoint", "file", lambda p, o: ["make-checkpoint", o]),
    ("make-dataset --out", "dir", lambda p, o: ["make-dataset", "--out", o]),
    ("export --output", "file", lambda p, o: ["export", "--seeded", "0", "--output", o]),
    ("convert --out-dir", "dir", lambda p, o: ["convert", p["file"], "--out-dir", o]),
    ("postprocess --results", "file", lambda p, o: ["postprocess", "--annotations", p["ann"], "--outputs", p["dir"],
                                                    "--results", o]),
    ("evaluate --metrics-out", "file", lambda p, o: ["evaluate", "--annotations", p["ann"], "--results",
                                                     p["results"], "--metrics-out", o]),
    ("perf --out", "file", lambda p, o: ["perf", "--backend", "null", "--out", o]),
    ("reproduce --run-dir", "dir", lambda p, o: ["reproduce", "--run-dir", o]),
]
INPUT_CASES = [
    ("infer --annotations", "file", lambda p, i: ["infer", "--annotations", i, "--images", p["img"],
                                                  "--backend", "null", "--out", p["out"]]),
    ("infer --images", "dir", lambda p, i: ["infer", "--annotations", p["ann"], "--images", i,
                                            "--backend", "null", "--out", p["out"]]),
    ("infer --model", "file", lambda p, i: ["infer", "--annotations", p["ann"], "--images", p["img"],
                                            "--model", i, "--out", p["out"]]),
    ("preprocess --annotations", "file", lambda p, i: ["preprocess", "--annotations", i, "--images", p["img"],
                                                       "--out", p["out"]]),
    ("preprocess --images", "dir", lambda p, i: ["preprocess", "--annotations", p["ann"], "--images", i,
                                                 "--out", p["out"]]),
    ("evaluate --annotations", "file", lambda p, i: ["evaluate", "--annotations", i, "--results", p["results"]]),
    ("evaluate --results", "file", lambda p, i: ["evaluate", "--annotations", p["ann"], "--results", i]),
    ("postprocess --manifest", "file", lambda p, i: ["postprocess", "--annotations", p["ann"], "--manifest", i,
                                                     "--outputs", p["dir"], "--results", p["out"]]),
    ("postprocess --outputs", "any", lambda p, i: ["postprocess", "--annotations", p["ann"], "--outputs", i,
                                                   "--results", p["out"]]),
    ("export --checkpoint", "file", lambda p, i: ["export", "--checkpoint", i, "--output", p["out"]]),
    ("convert onnx", "file", lambda p, i: ["convert", i, "--out-dir", p["out"]]),
    ("perf --from-benchmark", "file", lambda p, i: ["perf", "--from-benchmark", i]),
    ("perf --from-ais-bench", "file", lambda p, i: ["perf", "--from-ais-bench", i, "--batch-size", "1"]),
    ("gates", "file", lambda p, i: ["gates", i]),
    ("reproduce --checkpoint", "file", lambda p, i: ["reproduce", "--checkpoint", i, "--run-dir", p["out"]]),
    ("reproduce --coco-root", "dir", lambda p, i: ["reproduce", "--coco-root", i, "--run-dir", p["out"]]),
    ("reproduce --extra-perf", "file", lambda p, i: ["reproduce", "--extra-perf", i, "--run-dir", p["out"]]),
]
OUTPUT_IDS = [c[0] for c in OUTPUT_CASES]
INPUT_IDS = [c[0] for c in INPUT_CASES]

# What each kind of refusal says (besides the path); the checkpoint loader has its own wording
PHRASES = {
    "under a file": ("is a file, not a folder",),
    "wrong kind": ("is a folder", "is a file", "not a file"),
    "missing": ("not found",),
    "read-only folder": ("not writable",),
    "unreadable": ("not readable", "cannot be listed"),
}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    base = tmp_path_factory.mktemp("fs")
    ann, img = make_synthetic_coco(str(base / "syn"), num_images=2, seed=1)
    plain_file = str(base / "notes.txt")
    atomic_write_text(plain_file, "a plain file\n")
    results = str(base / "results.json")
    atomic_write_text(results, "[]")
    folder = base / "empty_folder"
    folder.mkdir()
    return {"ann": ann, "img": img, "file": plain_file, "dir": str(folder), "results": results, "base": str(base)}


def _tree(top):
    found = set()
    for folder, dirs, files in os.walk(top):
        found.update(os.path.join(folder, name) for name in dirs + files)
    return found


def assert_clear_refusal(status, err, path, kind):
    assert status == 1, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert path in err, err
    assert any(phrase in err for phrase in PHRASES[kind]), err


def run_in_process(argv, capsys, watched):
    before = _tree(watched)
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert _tree(watched) == before, "a refused run wrote something"
    return status, err


@pytest.mark.parametrize("name,role,build", OUTPUT_CASES, ids=OUTPUT_IDS)
def test_an_output_under_a_regular_file_is_refused(paths, tmp_path, capsys, name, role, build):
    out = os.path.join(paths["file"], "sub", "out")
    status, err = run_in_process(build(paths, out), capsys, paths["base"])
    assert_clear_refusal(status, err, out, "under a file")


@pytest.mark.parametrize("name,role,build", OUTPUT_CASES, ids=OUTPUT_IDS)
def test_an_output_of_the_wrong_kind_is_refused(paths, capsys, name, role, build):
    out = paths["dir"] if role == "file" else paths["file"]
    status, err = run_in_process(build(paths, out), capsys, paths["base"])
    assert_clear_refusal(status, err, out, "wrong kind")


@pytest.mark.parametrize("name,role,build", INPUT_CASES, ids=INPUT_IDS)
def test_a_missing_input_is_refused(paths, tmp_path, capsys, name, role, build):
    given = dict(paths, out=str(tmp_path / "out"))
    missing = str(tmp_path / "absent" / "input")
    status, err = run_in_process(build(given, missing), capsys, str(tmp_path))
    assert_clear_refusal(status, err, missing, "missing")


@pytest.mark.parametrize("name,role,build", [c for c in INPUT_CASES if c[1] != "any"],
                         ids=[c[0] for c in INPUT_CASES if c[1] != "any"])
def test_an_input_of_the_wrong_kind_is_refused(paths, tmp_path, capsys, name, role, build):
    given = dict(paths, out=str(tmp_path / "out"))
    wrong = paths["dir"] if role == "file" else paths["file"]
    status, err = run_in_process(build(given, wrong), capsys, str(tmp_path))
    assert_clear_refusal(status, err, wrong, "wrong kind")


# --- permissions: a child process that obeys permission bits ---------------------------------------

PR_CAPBSET_DROP = 24
# CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: what lets root read and write past permission bits
DAC_CAPABILITIES = (1, 2, 3)

# Runs each case through fsaf_repro.cli.main, catching what escapes it, and reports JSON.
DRIVER = """
import contextlib, io, json, sys, traceback
from fsaf_repro import cli
report = []
for argv in json.loads(sys.stdin.read()):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except BaseException:
            status = "raised"
            err.write(traceback.format_exc())
    report.append({"status": status, "err": err.getvalue()})
print(json.dumps(report))
"""


def _obey_permission_bits():
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in DAC_CAPABILITIES:
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_unprivileged(argvs):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(argvs), capture_output=True,
                          text=True, env=env, cwd=ROOT,
                          preexec_fn=_obey_permission_bits, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def locked_down(tmp_path):
    """A read-only folder and an unreadable file and folder, which the child process cannot get past."""
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    unreadable_file = tmp_path / "unreadable.json"
    unreadable_file.write_text("[]")
    unreadable_dir = tmp_path / "unreadable_folder"
    unreadable_dir.mkdir()
    os.chmod(str(read_only), 0o555)
    os.chmod(str(unreadable_file), 0)
    os.chmod(str(unreadable_dir), 0)
    probe = [sys.executable, "-c", "open({!r}, 'w')".format(str(read_only / "probe"))]
    try:
        try:
            enforced = subprocess.run(probe, preexec_fn=_obey_permission_bits, stderr=subprocess.DEVNULL).returncode
        except (OSError, subprocess.SubprocessError):
            enforced = 0
        if enforced == 0:
            pytest.skip("permission bits are not enforced for a child process here (root without prctl)")
        yield {"read_only": str(read_only), "file": str(unreadable_file), "dir": str(unreadable_dir)}
    finally:
        for path in (read_only, unreadable_file, unreadable_dir):
            os.chmod(str(path), stat.S_IRWXU)


def test_read_only_output_folders_are_refused_by_every_writing_verb(paths, locked_down):
    outs = [os.path.join(locked_down["read_only"], "out_" + str(n)) for n in range(len(OUTPUT_CASES))]
    report = run_unprivileged([build(paths, out) for (_, _, build), out in zip(OUTPUT_CASES, outs)])
    for (name, _, _), out, result in zip(OUTPUT_CASES, outs, report):
        assert_clear_refusal(result["status"], result["err"], out, "read-only folder")
        assert locked_down["read_only"] + " is not writable" in result["err"], name
    assert os.listdir(locked_down["read_only"]) == []


def test_unreadable_inputs_are_refused_by_every_reading_verb(paths, locked_down, tmp_path):
    given = dict(paths, out=str(tmp_path / "out"))
    cases = [(name, locked_down["dir"] if role == "dir" else locked_down["file"], build)
             for name, role, build in INPUT_CASES]
    report = run_unprivileged([build(given, bad) for _, bad, build in cases])
    for (name, bad, _), result in zip(cases, report):
        assert_clear_refusal(result["status"], result["err"], bad, "unreadable")
        assert result["err"].startswith(f"fsaf-repro {name.split()[0]}: error: "), name
    assert not os.path.exists(given["out"])


# --- permissions of what is written ---------------------------------------------------------------

@pytest.fixture
def usual_umask():
    previous = os.umask(0o022)
    yield 0o644
    os.umask(previous)


def _mode(path):
    return stat.S_IMODE(os.stat(str(path)).st_mode)


def test_temporary_files_for_renaming_get_the_usual_mode(tmp_path, usual_umask):
    path = new_temp_file(str(tmp_path), ".export-", ".onnx")
    assert _mode(path) == usual_umask and os.path.getsize(path) == 0
    assert new_temp_file(str(tmp_path), ".export-", ".onnx") != path


def test_exported_and_written_files_get_the_usual_mode(tmp_path, usual_umask, capsys):
    out = tmp_path / "fsaf_raw.onnx"
    assert cli.main(["export", "--seeded", "0", "--output", str(out), "--flavour", "raw", "--height", "64",
                     "--width", "96"]) == 0
    with open(str(out) + ".json") as handle:
        checkpoint = json.load(handle)["checkpoint"]["path"]
    for path in (out, str(out) + ".json", checkpoint):
        assert _mode(path) == usual_umask, path
    assert sorted(os.listdir(str(tmp_path))) == sorted([out.name, out.name + ".json", os.path.basename(checkpoint)])
    assert "exported" in capsys.readouterr().out


def test_a_refusal_from_the_os_during_a_run_is_one_line(tmp_path, capsys, monkeypatch):
    """What the early checks cannot see (a disk filling up mid-run) still ends in one line naming the path."""
    target = str(tmp_path / "records.json")

    def full_disk(path, payload, indent=2):
        raise OSError(28, "No space left on device", path)

    from fsaf_repro import perf
    monkeypatch.setattr(perf, "atomic_write_json", full_disk)
    status = cli.main(["perf", "--backend", "null", "--loops", "1", "--warmup", "0", "--height", "64", "--width",
                       "96", "--out", target])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err and err.count("\n") == 1
    assert target in err and "disk is full" in err

