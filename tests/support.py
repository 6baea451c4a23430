"""Helpers shared by tests (importable as `tests.support`)."""

# Reduced input size for unit tests: P3 is 32x40 = 1280 locations, so the per-level top-1000 is
# exercised; one full-size 800x1216 case exists too.
UNIT_INPUT_HW = (256, 320)


def generated_inputs(seed, count, height, width):
    """Normalised network inputs with image-like structure (deterministic per seed)."""
    import torch

    from fsaf_repro.checkpoint import generated_network_inputs

    return generated_network_inputs(torch.Generator().manual_seed(seed), count, height, width)


# The package replaces a checkpoint, ONNX or om file atomically and never edits one in place, so a
# copy of a run directory may share them by hard link (falling back to a real copy across file systems).
_SHARED_SUFFIXES = (".pth", ".onnx", ".om")


def link_or_copy(source, target):
    """A `copy_function` for shutil.copytree: hard links for the big model files, copies otherwise."""
    import os
    import shutil

    if source.endswith(_SHARED_SUFFIXES):
        try:
            os.link(source, target)
            return target
        except OSError:
            pass
    return shutil.copy2(source, target)


def canonical(name):
    """A Python distribution's canonical name (PEP 503): runs of -_. as one -, lower case."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(constraints_path):
    """{canonical name: version} of the `name==version` lines of a constraints file."""
    import re

    pins = {}
    with open(constraints_path) as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)$", line)
            if not match:
                raise AssertionError(f"{constraints_path}:{number}: not an exact pin: {line!r}")
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def citations_edited(value):
    """`value` with the text of every citation changed, at any depth, and nothing else."""
    from fsaf_repro.spec import is_citation

    if isinstance(value, dict):
        return {key: (_edited_citation(item) if is_citation(key) else citations_edited(item))
                for key, item in value.items()}
    if isinstance(value, list):
        return [citations_edited(item) for item in value]
    return value


def _edited_citation(citation):
    if isinstance(citation, dict):  # `_sources`: section -> citation
        return {key: text + " (edited)" for key, text in citation.items()}
    return citation + " (edited)"


def fake_om(directory, batch_size, soc, height, width):
    """An om made by the real `convert` with the fake `atc` (tests/unit/fake_tools installed): the path of
    `<directory>/om/fsaf_bs<batch_size>.om`, its sidecar saying ascend-nms at height x width."""
    import json
    import os

    from fsaf_repro import convert

    onnx = os.path.join(str(directory), "fsaf.onnx")
    with open(onnx, "wb") as handle:
        handle.write(b"onnx")
    with open(onnx + ".json", "w") as handle:
        json.dump({"flavour": "ascend-nms", "batch_size": "dynamic",
                   "input": {"name": "input", "shape": [1, 3, height, width], "dtype": "float32"}}, handle)
    convert.convert_one(onnx, os.path.join(str(directory), "om"), convert.ConversionJob("atc", batch_size, soc))
    return os.path.join(str(directory), "om", f"fsaf_bs{batch_size}.om")


def tree_state(root, skip_top=()):
    """{path relative to root: (size, mtime_ns)} of every file below root, leaving out the top-level
    folders named in skip_top: a snapshot to prove that something wrote nothing."""
    import os

    state = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            if relative.split(os.sep)[0] not in skip_top:
                status = os.stat(path)
                state[relative] = (status.st_size, status.st_mtime_ns)
    return state
