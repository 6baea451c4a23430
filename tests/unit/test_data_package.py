"""The shape of fsaf_repro.data: its parts import one way (transform <- coco <- bins, stream), none imports
argparse (its verbs live in fsaf_repro.cli.preprocess), and the names other code imports from the package
stay there."""
import ast
import importlib
import os

import pytest

import fsaf_repro.data

PACKAGE_DIR = os.path.dirname(fsaf_repro.data.__file__)
# module -> the data modules it may import; the direction the package's docstring states
ALLOWED = {
    "transform": set(),
    "coco": {"transform"},
    "bins": {"coco", "transform"},
    "stream": {"coco", "transform"},
}
# names imported from fsaf_repro.data elsewhere in the repository (package, tests, benchmarks)
USED_ELSEWHERE = [
    "BIN_MISSING", "BIN_RECORD_NAME", "CocoImageSet", "ImageMeta", "bin_bytes", "bin_file_problem",
    "boxes_to_original", "file_sha256", "iter_batches", "letterbox_to_canvas", "letterbox_to_canvas_uint8",
    "load_annotation_json", "normalisation_lut", "probe_decoded_size", "read_annotation_file", "read_bgr",
    "read_info_file", "scaled_size", "write_bins", "write_info_files",
]


def _imports(module):
    """(data modules imported, top-level modules imported) by fsaf_repro/data/<module>.py."""
    with open(os.path.join(PACKAGE_DIR, module + ".py")) as handle:
        tree = ast.parse(handle.read())
    siblings, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            siblings.add(node.module or "")
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            external.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            external.update(alias.name.split(".")[0] for alias in node.names)
    return siblings, external


def test_every_module_of_the_package_is_in_the_table():
    modules = {name[:-3] for name in os.listdir(PACKAGE_DIR) if name.endswith(".py") and name != "__init__.py"}
    assert modules == set(ALLOWED)


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_imports_flow_one_way(module):
    siblings, external = _imports(module)
    assert siblings <= ALLOWED[module], f"{module} imports {sorted(siblings - ALLOWED[module])}"
    assert "argparse" not in external


def test_the_package_does_not_load_its_command_line():
    siblings, external = _imports("__init__")
    assert "cli" not in siblings and "argparse" not in external


@pytest.mark.parametrize("name", USED_ELSEWHERE)
def test_names_used_elsewhere_are_importable_from_the_package(name):
    assert name in fsaf_repro.data.__all__
    value = getattr(fsaf_repro.data, name)
    home = getattr(value, "__module__", None)
    if home is not None and home.startswith("fsaf_repro.data."):
        # the package re-exports the object itself, not a copy
        assert getattr(importlib.import_module(home), name) is value
