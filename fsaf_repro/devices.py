"""Every device of a host at once: one shard of the image set per device, one process per shard.

`infer --devices 0,1,2,3` splits the image set into one shard per listed device (fsaf_repro.shards)
and runs each shard as its own `fsaf-repro infer --shard i/n` process, with its own results part and
journal under `<out>.parts/`, so that each resumes on its own after a kill. What a device is comes
from the backend's class (`device_option`): an NPU or GPU id handed to the backend's device option,
or, for a backend without one (CPU runtimes), a worker process, the host's threads split evenly
between the workers. Once every shard has finished, the parts are merged into `<out>`: the bytes of a
one-device run. A shard that fails is named with its device and its log; the other shards' parts and
journals stay, and running the same command again reuses them and resumes the failed shard.
"""
import os
import subprocess
import sys
from typing import Any, Dict, List, Sequence

from .errors import BackendError

PARTS_SUFFIX = ".parts"


def shard_options(backend_cls: Any, devices: Sequence[int], threads: Any = None) -> List[Dict[str, Any]]:
    """The backend options of each shard: the device's id through the class's `device_option`, or for
    a backend without one, worker processes with `threads` (default: the host's cores) split between
    them (at least one each) where the backend takes threads."""
    if backend_cls.device_option:
        return [{backend_cls.device_option: int(device)} for device in devices]
    if backend_cls.takes_threads:
        total = int(threads) if threads else (os.cpu_count() or 1)
        return [{"threads": max(1, total // len(devices))} for _ in devices]
    return [{} for _ in devices]


def describe_device(backend_cls: Any, device: int) -> str:
    """How an error or a record names one listed device."""
    if backend_cls.device_option:
        return f"{backend_cls.device_kind} device {device}"
    return f"cpu worker {device}"


def parts_dir(out: str) -> str:
    return str(out) + PARTS_SUFFIX


def part_path(out: str, index: int, count: int) -> str:
    name = os.path.basename(str(out))
    return os.path.join(parts_dir(out), f"{name}.shard-{index}-of-{count}.json")


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_shard_processes(argvs: Sequence[List[str]], labels: Sequence[str], log_paths: Sequence[str]) -> None:
    """Run `python -m fsaf_repro <argv>` for every shard at once and wait for all of them; BackendError
    naming every failed shard (its label, exit status, last log line and log) after all have ended, so
    that one failing device never stops the others' work."""
    env = dict(os.environ)
    # the children import this very package, also when it is not the installed one (a checkout)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
    processes = []
    for argv, log_path in zip(argvs, log_paths):
        with open(log_path, "w") as log:
            processes.append(subprocess.Popen([sys.executable, "-m", "fsaf_repro"] + list(argv), stdout=log,
                                              stderr=subprocess.STDOUT, env=env))
    failures = []
    for process, label, log_path in zip(processes, labels, log_paths):
        status = process.wait()
        if status != 0:
            failures.append(f"{label} failed ({_exit_text(status)}: {_last_line(log_path)}; log {log_path})")
    if failures:
        raise BackendError("{}; the other shards' parts and every journal are kept: run the same command again "
                           "to resume the failed shard(s)".format("; ".join(failures)))


def _exit_text(status: int) -> str:
    return f"killed by signal {-status}" if status < 0 else f"exit status {status}"


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"
