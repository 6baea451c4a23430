"""Scratch directories for the benchmarks.

A benchmark writes checkpoints and ONNX models of about 146 MB each; a temporary directory left
behind by every run filled the disk of a CI machine once. A directory the user names with
``--workdir`` is kept (it is theirs to inspect); one made here is removed when the process exits,
whether the benchmark finished or raised.
"""
import atexit
import os
import shutil
import tempfile


def scratch_dir(given, prefix):
    if given:
        if not os.path.isdir(given):
            os.makedirs(given)
        return given
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path
