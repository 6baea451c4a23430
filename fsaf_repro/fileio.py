"""File helpers shared by every stage: content hashes and atomic writes.

An atomic write goes to `<path>.part-<host>-<pid>` beside the target and is renamed over it only
once complete, so a crash or a kill never leaves a truncated file under the real name (a rerun then
redoes the file instead of trusting it). Stale `.part-` files are recognisable by that mark, and
their writer by the host and pid in it (see `is_stale_part`).
"""
import errno
import hashlib
import json
import os
import socket
import time

PART_MARK = ".part-"
# A part file of another host's writer (a shared folder: its pid means nothing here) is stale once
# untouched this long.
STALE_PART_SECONDS = 600.0


def _host_tag():
    """This host's name as part files carry it: without '-', so that the pid after it parses back."""
    return socket.gethostname().replace("-", "_")


def part_suffix():
    """`.part-<host>-<pid>` of this process."""
    return "{}{}-{}".format(PART_MARK, _host_tag(), os.getpid())


def file_sha256(path, chunk_size=1 << 20):
    """Hex sha256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(str(path), "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic(path, write):
    path = str(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory)
    tmp = path + part_suffix()
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_bytes(path, payload):
    return _atomic(path, lambda handle: handle.write(payload))


def atomic_write_array(path, array):
    """Raw bytes of a C-contiguous array, written without an intermediate bytes copy."""
    return _atomic(path, array.tofile)


def atomic_write_text(path, text):
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path, error_cls, what):
    """Parsed JSON of `path`; `error_cls` naming the file (as `what`) when absent or malformed."""
    try:
        with open(str(path)) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise error_cls("{} not found: {}".format(what, path))
    except ValueError as exc:
        raise error_cls("{} {} is not valid JSON: {}".format(what, path, exc))


def atomic_write_json(path, payload, indent=2):
    """`payload` as JSON with sorted keys and a final newline."""
    return atomic_write_text(path, json.dumps(payload, indent=indent, sort_keys=True) + "\n")


def _pid_running(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # alive, owned by someone else
    return True


def is_stale_part(path, now=None, grace_seconds=STALE_PART_SECONDS):
    """True for a part file left by a writer that is gone.

    `<target>.part-<host>-<pid>`: written here, stale when that pid is not running or (the pid
    reused by another process) the file is untouched for `grace_seconds`; written on another host,
    stale once untouched for `grace_seconds`. `<target>.part-<pid>` (no host) is taken as this
    host's. This process's own part files are never stale. The grace period must exceed the time
    one write takes (milliseconds for a .bin). Containers that share a host name but not a pid
    namespace look like one host: give them distinct host names when they share a folder.
    """
    name = os.path.basename(str(path))
    if PART_MARK not in name:
        return False
    writer = name.rsplit(PART_MARK, 1)[1]
    host, _, pid_text = writer.rpartition("-")
    if not pid_text.isdigit():
        return False
    local = host in ("", _host_tag())
    if local and int(pid_text) == os.getpid():
        return False
    if local and not _pid_running(int(pid_text)):
        return True
    try:
        age = (time.time() if now is None else now) - os.path.getmtime(str(path))
    except OSError:
        return False  # gone already
    return age > grace_seconds
