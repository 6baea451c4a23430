"""File helpers shared by every stage: content hashes and atomic writes.

An atomic write goes to `<path>.part-<host>-<pid>` beside the target and is renamed over it only
once complete, so a crash or a kill never leaves a truncated file under the real name (a rerun then
redoes the file instead of trusting it). Stale `.part-` files are recognisable by that mark, and
their writer by the host and pid in it (see `is_stale_part`).
"""
import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from typing import Any, Iterator, List, Optional, Type, Union

from .errors import PathError

# a path as the functions here take it: a string or an os.PathLike (pathlib.Path)
PathLike = Union[str, os.PathLike]

PART_MARK = ".part-"
# A part file of another host's writer (a shared folder: its pid means nothing here) is stale once
# untouched this long.
STALE_PART_SECONDS = 600.0


def _host_tag():
    """This host's name as part files carry it: without '-', so that the pid after it parses back."""
    return socket.gethostname().replace("-", "_")


def part_suffix() -> str:
    """`.part-<host>-<pid>` of this process."""
    return f"{PART_MARK}{_host_tag()}-{os.getpid()}"


def file_sha256(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(str(path), "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def naming_os_errors(path: PathLike):
    """Re-raise an OSError that names no file (a write() or flush() failing with ENOSPC, EIO, EDQUOT:
    the OS gives only the error number) as the same error naming `path`, the file being written, so
    that the command line can say which output failed."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


@contextlib.contextmanager
def atomic_output(path: PathLike, temp_path: Optional[str] = None) -> Iterator[str]:
    """The package's one atomic write: yields a temporary path beside `path` (`temp_path`, or
    `<path>.part-<host>-<pid>`) for the block to write; when the block ends normally it is renamed over
    `path` in one step, so a reader never sees a half-written file; on any exception (KeyboardInterrupt
    included) it is removed and `path` is left as it was. An OSError names `path`, not the part file."""
    path = str(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = temp_path or path + part_suffix()
    try:
        with naming_os_errors(path):
            if not os.path.isdir(directory):
                os.makedirs(directory)
        yield tmp
        with naming_os_errors(path):
            os.replace(tmp, path)
    except OSError as exc:
        _remove_if_present(tmp)
        if exc.filename == tmp:  # name the file being written, not its part file
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise
    except BaseException:
        _remove_if_present(tmp)
        raise


def _atomic(path, write):
    with atomic_output(path) as tmp, naming_os_errors(path), open(tmp, "wb") as handle:
        write(handle)
    return str(path)


def _remove_if_present(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def scratch_stem(prefix: str) -> str:
    """`<prefix><host>-<pid>-<random>`: a scratch name that says which writer owns it, so that a later
    run can tell a leftover of a writer that is gone (killed: no finally ran) from a live one's."""
    return f"{prefix}{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def new_temp_file(directory: str, prefix: str, suffix: str) -> str:
    """Create an empty, uniquely named file in `directory` and return its path, for writers that need
    a path (an exporter) before the rename over the target. Its name says its writer (scratch_stem);
    remove_stale_scratch(directory, prefix) removes those of writers that are gone.

    Its mode is the usual one (0666 less the umask), unlike tempfile.mkstemp's 0600, which the rename
    would carry over to the published file.
    """
    while True:
        path = os.path.join(directory, scratch_stem(prefix) + suffix)
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(descriptor)
        return path


def atomic_write_bytes(path: PathLike, payload: bytes) -> str:
    return _atomic(path, lambda handle: handle.write(payload))


def atomic_write_array(path: PathLike, array: Any) -> str:
    """Raw bytes of a C-contiguous array, written without an intermediate bytes copy."""
    return _atomic(path, array.tofile)


def atomic_write_text(path: PathLike, text: str) -> str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: PathLike, error_cls: Type[Exception], what: str, schema: Optional[Any] = None) -> Any:
    """Parsed JSON of `path` through the one loader (fsaf_repro.jsonio: depth limit, `schema`);
    `error_cls` naming the file (as `what`) when absent, malformed or of the wrong shape."""
    from .jsonio import load_json
    return load_json(path, error_cls, what, schema)


def atomic_write_json(path: PathLike, payload: Any, indent: Optional[int] = 2) -> str:
    """`payload` as JSON with sorted keys and a final newline."""
    return atomic_write_text(path, json.dumps(payload, indent=indent, sort_keys=True) + "\n")


# --- checks of the paths a verb is given ---------------------------------------------------------
#
# Each check runs before any work (the CLI runs them while parsing the arguments, through the
# `input_file`-style argument types of fsaf_repro.cli.args), so a run does not load a model or
# process a data set only to fail on its first or last write. Each raises PathError naming the path and what to do.

_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def _blocking_file(path):
    """The lowest folder component of `path` that exists as something other than a folder (None
    when there is none): `a/notes.txt/b.json` cannot be created whatever the permissions."""
    current = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.exists(current) and not os.path.isdir(current):
            return current
        above = os.path.dirname(current)
        if above == current:
            return None
        current = above


def _nearest_existing(path):
    """`path` itself or its nearest existing ancestor."""
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        current = os.path.dirname(current)
    return current


def _denied_reason(exc):
    if exc.errno == errno.EROFS:
        return "read-only file system"
    return "permission denied" if exc.errno in (errno.EACCES, errno.EPERM) else os.strerror(exc.errno)


def _probe_writable(folder):
    """None when a file can be created in `folder`, else the OS's reason (a real write: permission
    bits, read-only mounts, immutable folders and dropped privileges all show)."""
    probe = os.path.join(folder, ".fsaf-write-probe" + part_suffix())
    try:
        descriptor = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        return _denied_reason(exc)
    os.close(descriptor)
    os.remove(probe)
    return None


def _require_existing(path, what):
    """PathError naming a missing input, and the file in its way when a parent is not a folder."""
    if not os.path.exists(path):
        blocker = _blocking_file(path)
        in_the_way = f" ({blocker} is a file, not a folder)" if blocker else ""
        raise PathError(f"{what} not found: {path}{in_the_way}")


def check_input_file(path: PathLike, what: str = "input file") -> str:
    """`path` when it is a readable regular file; PathError naming it otherwise."""
    path = str(path)
    _require_existing(path, what)
    if os.path.isdir(path):
        raise PathError(f"{what} {path} is a folder; give the file itself")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise PathError(f"{what} {path} is not readable ({_denied_reason(exc)}); fix its permissions or give a "
                        "readable copy")
    return path


def check_input_dir(path: PathLike, what: str = "input folder") -> str:
    """`path` when it is a folder whose entries can be listed and opened; PathError otherwise."""
    path = str(path)
    _require_existing(path, what)
    if not os.path.isdir(path):
        raise PathError(f"{what} {path} is a file; give the folder")
    try:
        os.listdir(path)
    except OSError as exc:
        raise PathError(f"{what} {path} cannot be listed ({_denied_reason(exc)}); fix its permissions")
    if not os.access(path, os.X_OK):
        raise PathError(f"{what} {path} cannot be entered (permission denied); fix its permissions")
    return path


def check_input_path(path: PathLike, what: str = "input") -> str:
    """`path` when it is a readable file or a listable folder (for options that take either)."""
    return check_input_dir(path, what) if os.path.isdir(str(path)) else check_input_file(path, what)


def _check_writable_place(path, what):
    blocker = _blocking_file(path)
    if blocker:
        raise PathError(f"cannot write {what} {path}: {blocker} is a file, not a folder; choose another path")
    folder = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    reason = _probe_writable(folder)
    if reason:
        raise PathError(f"cannot write {what} {path}: folder {folder} is not writable ({reason}); choose a writable "
                        "location or fix the folder's permissions")


def check_output_file(path: PathLike, what: str = "output file") -> str:
    """`path` when a file can be written there (missing folders above it are created by the writer);
    PathError when it is a folder, lies under a regular file or its folder is not writable."""
    path = str(path)
    if os.path.isdir(path):
        raise PathError(f"cannot write {what} {path}: it is a folder; give a file path")
    _check_writable_place(path, what)
    return path


def check_output_dir(path: PathLike, what: str = "output folder") -> str:
    """`path` when it is (or can be created as) a writable folder; PathError otherwise."""
    path = str(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise PathError(f"cannot write {what} {path}: it is a file, not a folder; choose another path")
    if os.path.isdir(path):
        reason = _probe_writable(path)
        if reason:
            raise PathError(f"cannot write {what} {path}: the folder is not writable ({reason}); choose a writable "
                            "location or fix its permissions")
        return path
    _check_writable_place(path, what)
    return path


def _pid_running(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # alive, owned by someone else
    return True


def is_stale_part(path: PathLike, now: Optional[float] = None, grace_seconds: float = STALE_PART_SECONDS) -> bool:
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
    return _writer_gone(path, host, pid_text, now, grace_seconds)


def _writer_gone(path, host, pid_text, now, grace_seconds):
    """True when the writer (host, pid) of `path` is gone: this host's and not running, or another
    host's and `path` untouched for `grace_seconds`. This process's own files are never stale."""
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


# Scratch of a writer on another host (a shared folder) is left alone this long: an export's
# temporary file stays empty until the exporter writes it at the end, which takes minutes at 800x1216.
STALE_SCRATCH_SECONDS = 24 * 3600.0


def remove_stale_scratch(directory: str, prefix: str, grace_seconds: float = STALE_SCRATCH_SECONDS) -> List[str]:
    """Remove the scratch files and folders named `<prefix><host>-<pid>-...` (scratch_stem) in
    `directory` whose writer is gone, and that this user owns; returns their paths. A run calls it
    before making its own scratch there, so a killed run's leftovers go with the next run."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed  # nothing to clean where nothing can be listed
    for name in names:
        if not name.startswith(prefix):
            continue
        host, _, rest = name[len(prefix):].partition("-")
        pid_text = rest.partition("-")[0]
        path = os.path.join(directory, name)
        try:
            owned = os.lstat(path).st_uid == os.getuid() if hasattr(os, "getuid") else True
        except OSError:
            continue
        if not (owned and _writer_gone(path, host, pid_text, None, grace_seconds)):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            _remove_if_present(path)
        removed.append(path)
    return removed
