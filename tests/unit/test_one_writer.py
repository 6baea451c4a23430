"""One writer per output: a second run on the same output refuses at once, naming the running one."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from fsaf_repro import backends, cli, runner
from fsaf_repro.data import CocoImageSet
from fsaf_repro.errors import RunLocked
from fsaf_repro.locking import RunLock, lock_path_for, read_lock_record
from fsaf_repro.synthetic import make_synthetic_coco

H, W = 64, 96
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_IMAGES = 12
# per batch of one image: the winner's run lasts NUM_IMAGES * DELAY_S after it took the lock, far
# longer than the gap between the two processes' start-ups
DELAY_S = 0.4

# A process that takes the lock of argv[1], says so, and holds it until its stdin closes (or dies
# without letting go when argv[2] == "die").
HOLDER = """
import os, sys
from fsaf_repro.locking import RunLock
lock = RunLock(sys.argv[1], "holder").acquire()
print("locked", flush=True)
if sys.argv[2] == "die":
    os._exit(0)  # no release: the lock file stays, with this process's record
sys.stdin.read()
lock.release()
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_coco(str(tmp_path_factory.mktemp("syn")), num_images=NUM_IMAGES, seed=5)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def infer_argv(dataset, out, delay_s):
    return [sys.executable, "-m", "fsaf_repro", "infer", "--annotations", dataset[0], "--images", dataset[1],
            "--height", str(H), "--width", str(W), "--backend", "null", "--backend-option", "detections=echo",
            "--backend-option", f"delay_s={delay_s}", "--batch-size", "1", "--out", str(out),
            "--no-progress"]


def start_holder(output, mode="hold"):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(output), mode], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=_env(), cwd=ROOT, universal_newlines=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def stop_holder(holder):
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0


def test_two_infer_runs_on_one_output_one_proceeds_the_other_refuses_at_once(dataset, tmp_path):
    reference = tmp_path / "reference.json"
    runner.infer_dataset(CocoImageSet(dataset[0], dataset[1], height=H, width=W),
                         backends.create_backend("null", detections="echo").load(), str(reference),
                         batch_size=1, progress=False)
    out = tmp_path / "shared" / "results.json"
    procs = [subprocess.Popen(infer_argv(dataset, out, DELAY_S), env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True) for _ in range(2)]
    finished = {}
    outputs = {}
    while len(finished) < 2:
        for proc in procs:
            if proc.pid not in finished and proc.poll() is not None:
                finished[proc.pid] = time.monotonic()
                outputs[proc.pid] = proc.communicate()
        time.sleep(0.05)
    codes = sorted(proc.returncode for proc in procs)
    assert codes == [0, 1], outputs
    winner = next(p for p in procs if p.returncode == 0)
    loser = next(p for p in procs if p.returncode == 1)
    message = outputs[loser.pid][1]
    assert "Traceback" not in message and message.count("\n") == 1, message
    assert f"pid {winner.pid}" in message and socket.gethostname() in message
    assert lock_path_for(out) in message and str(out) in message
    # refused at once: long before the winner's run (NUM_IMAGES * DELAY_S seconds) ended
    assert finished[loser.pid] + NUM_IMAGES * DELAY_S / 2 < finished[winner.pid]
    with open(str(reference), "rb") as a, open(str(out), "rb") as b:
        assert a.read() == b.read()
    assert not os.path.exists(lock_path_for(out)) and not os.path.exists(str(out) + ".journal")


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    output = tmp_path / "bins"
    dead = start_holder(output, "die")
    assert dead.wait(timeout=30) == 0
    lock_file = lock_path_for(output)
    stale = read_lock_record(lock_file)
    assert stale["pid"] == dead.pid  # the dead run's record is still there
    with open(lock_file, "a") as handle:
        handle.write(" " * 4096 + "tail of an older, longer record\n")
    with RunLock(output, "preprocess"):
        with open(lock_file) as handle:
            record = json.loads(handle.read())  # exactly one record: the stale bytes are gone
        assert record["pid"] == os.getpid() and record["verb"] == "preprocess"
        assert record["host"] == socket.gethostname() and record["started"]
    assert not os.path.exists(lock_file)


def test_a_live_holder_is_named_and_its_lock_survives_the_refusal(tmp_path):
    output = tmp_path / "out.json"
    holder = start_holder(output)
    try:
        with pytest.raises(RunLocked) as info:
            RunLock(output, "infer").acquire()
        message = str(info.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert "fsaf-repro holder" in message and lock_path_for(output) in message
        assert read_lock_record(lock_path_for(output))["pid"] == holder.pid
    finally:
        stop_holder(holder)
    with RunLock(output, "infer"):  # free again once the holder let go
        pass


def test_the_same_process_nests_its_own_lock(tmp_path):
    output = tmp_path / "r.json"
    with RunLock(output, "infer"):
        with RunLock(output, "infer"):  # the infer verb, then the runner it calls
            pass
        assert read_lock_record(lock_path_for(output))["pid"] == os.getpid()  # still held
    assert not os.path.exists(lock_path_for(output))


@pytest.mark.parametrize("verb", ["preprocess", "reproduce", "infer"])
def test_each_writing_verb_refuses_a_locked_output_before_any_work(dataset, tmp_path, capsys, verb):
    output = tmp_path / "out"
    argv = {
        "preprocess": ["preprocess", "--annotations", dataset[0], "--images", dataset[1], "--height", str(H),
                       "--width", str(W), "--no-progress", "--workers", "1", "--out", str(output),
                       "--bin-info", str(tmp_path / "fsaf.info"), "--jpg-info", str(tmp_path / "fsaf_jpeg.info")],
        "reproduce": ["reproduce", "--run-dir", str(output), "--backends", "null", "--fit-steps", "0"],
        "infer": ["infer", "--annotations", dataset[0], "--images", dataset[1], "--height", str(H),
                  "--width", str(W), "--backend", "null", "--no-progress", "--out", str(output)],
    }[verb]
    holder = start_holder(output)
    try:
        assert cli.main(argv) == 1
    finally:
        stop_holder(holder)
    err = capsys.readouterr().err
    assert f"pid {holder.pid}" in err and socket.gethostname() in err and str(output) in err
    assert err.count("\n") == 1
    assert not os.path.exists(str(output)) and not os.path.exists(str(output) + ".journal")
    assert not os.path.exists(str(tmp_path / "fsaf.info"))
