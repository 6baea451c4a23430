"""One writer per output: an exclusive lock held for the lifetime of a run.

A run that writes an output (infer's results json, preprocess's .bin folder, reproduce's run
directory) first takes `fcntl.flock` on `<output>.lock` beside it and records its pid, host, verb
and start time there. A second run on the same output refuses at once, naming the running one and
the lock file, instead of interleaving its writes with the first (two writers tear a journal).

The kernel drops a flock when its process dies, however it dies, so a lock file left by a killed
run is simply taken over (its stale record is rewritten). The lock is keyed on the output's resolved
path (symlinks followed), so every spelling of one output meets the same lock. The holder removes the file before it
lets go, and a taker checks that the file it locked is still the one at the path, so a run that
opened the file just before the holder removed it cannot hold a lock nobody else sees.

flock is per process here: taking the lock of an output this process already holds (the infer
verb, then the runner it calls) nests instead of refusing.
"""
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time
import threading

from .errors import PathError, RunLocked
from .jsonio import mapping, parse_json

LOCK_SUFFIX = ".lock"

_held = {}  # lock path -> [RunLock, depth] of this process
_held_guard = threading.Lock()


def lock_path_for(output):
    """`<output>.lock` beside the output file or folder (so that it does not mix with the output's files),
    on the output's resolved path: two runs reaching one output through different paths (a symlink to it
    or to a folder above it) take one lock, instead of each locking its own spelling and interleaving."""
    return os.path.realpath(str(output)).rstrip(os.sep) + LOCK_SUFFIX


def _describe(record, lock_path):
    if not record:
        return f"another run (it has not recorded itself yet; lock {lock_path})"
    verb, pid, host, started = (record.get(key, "?") for key in ("verb", "pid", "host", "started"))
    return f"fsaf-repro {verb} (pid {pid} on host {host}, started {started}; lock {lock_path})"


def read_lock_record(lock_path):
    """The record a lock file holds ({} when empty or unreadable: a holder that is just starting)."""
    try:
        with open(lock_path, "rb") as handle:
            raw = handle.read()
        # a lock record only describes its holder in a refusal: one that cannot be read is described as unknown
        return parse_json(raw or b"{}", RunLocked, f"lock record {lock_path}", mapping())
    except (OSError, RunLocked):
        return {}


def _holder_record(lock_path, tries=20, pause_s=0.05):
    """The holder's record, waiting up to tries x pause_s for it: a run that has just taken the flock writes its
    record right after, and a run started at the same moment would otherwise see an empty file."""
    record = read_lock_record(lock_path)
    for _ in range(tries):
        if record:
            break
        time.sleep(pause_s)
        record = read_lock_record(lock_path)
    return record


class RunLock:
    """Exclusive lock of one output for one run; a context manager."""

    def __init__(self, output, verb):
        self.output = os.path.abspath(str(output))
        self.verb = verb
        self.path = lock_path_for(output)
        self._fd = None

    def _open_locked(self):
        """A descriptor of the lock file holding its flock; RunLocked when another run holds it."""
        folder = os.path.dirname(self.path)
        while True:
            try:
                # exist_ok: two runs starting on one new output both create its folder; the second must not fail
                os.makedirs(folder, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise PathError(f"cannot create the lock file {self.path} of {self.output} ({exc.strerror or exc}); "
                                f"the folder {folder} must be writable")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    holder = _describe(_holder_record(self.path), self.path)
                    raise RunLocked(f"{self.output} is being written by {holder}; wait for that run to finish or give "
                                    "another output")
                raise PathError(f"cannot lock {self.path} ({exc.strerror or exc}); this file system does not support "
                                f"flock: use a local folder for {self.output}")
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            opened = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                return fd
            os.close(fd)  # the previous holder removed this file while we opened it: lock the new one

    def acquire(self):
        with _held_guard:
            entry = _held.get(self.path)
            if entry is not None:
                entry[1] += 1
                return entry[0]
            self._fd = self._open_locked()
            record = {"pid": os.getpid(), "host": socket.gethostname(), "verb": self.verb, "output": self.output,
                      "started": datetime.datetime.now().replace(microsecond=0).isoformat(),
                      "argv": sys.argv}
            payload = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
            # a dead holder's record may be longer than ours: empty the file before writing
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, payload, 0)
            _held[self.path] = [self, 1]
            return self

    def release(self):
        with _held_guard:
            entry = _held.get(self.path)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _held[self.path]
            holder = entry[0]
            try:
                os.remove(holder.path)  # while still locked: nobody else can be holding this file
            except OSError:
                pass  # a lock file left behind is harmless: its flock goes with it, the next run takes it over
            finally:
                os.close(holder._fd)
                holder._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()
        return False


def run_lock(output, verb):
    """Context manager holding the lock of `output` for `verb` (RunLocked when another run holds it)."""
    return RunLock(output, verb)
