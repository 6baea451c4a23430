"""File helpers shared by every stage: content hashes and atomic writes.

An atomic write goes to `<path>.part-<pid>` beside the target and is renamed over it only once
complete, so a crash or a kill never leaves a truncated file under the real name (a rerun then
redoes the file instead of trusting it). Stale `.part-` files are recognisable by that mark.
"""
import hashlib
import json
import os

PART_MARK = ".part-"


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
    tmp = "{}{}{}".format(path, PART_MARK, os.getpid())
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
