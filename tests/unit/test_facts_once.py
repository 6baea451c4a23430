"""Each fact written once (docs/architecture.md): a literal the package names by a constant appears in
its code only where that constant is defined, and the verbs derive their choices from the module that
owns them. Docstrings and help texts may mention a value; only a string that *is* the value counts."""
import ast
import os
import sys

import pytest

import fsaf_repro
from fsaf_repro import convert, evaluate, report
from fsaf_repro.cli import build_parser
from fsaf_repro.data import coco
from fsaf_repro.spec import load_recipe_spec

pytestmark = pytest.mark.unit

PACKAGE_DIR = os.path.dirname(os.path.abspath(fsaf_repro.__file__))


# Python 3.7 parses a string literal as ast.Str (its .s), later Pythons as ast.Constant (its .value)
_STRING_NODE = ast.Str if sys.version_info < (3, 8) else ast.Constant


def _string(node):
    if not isinstance(node, _STRING_NODE):
        return None
    return node.s if sys.version_info < (3, 8) else node.value


def _docstring_nodes(tree):
    nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and _string(first.value) is not None:
                nodes.add(id(first.value))
    return nodes


def literal_places(value):
    """'module:line' of every string constant equal to `value` in the package's code (docstrings left out)."""
    places = []
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
            docstrings = _docstring_nodes(tree)
            places.extend(f"{os.path.relpath(path, PACKAGE_DIR)}:{node.lineno}" for node in ast.walk(tree)
                          if _string(node) == value and id(node) not in docstrings)
    return sorted(places)


@pytest.mark.parametrize("value, owner", [
    (convert.FORCE_FP16, "convert.py"),
    (report.REPORT_NAME, "report.py"),
    (evaluate.PYCOCOTOOLS, "evaluate.py"),
    (coco.ANNOTATION_FILE_NAME, os.path.join("data", "coco.py")),
])
def test_a_named_literal_is_written_once_where_its_constant_is_defined(value, owner):
    places = literal_places(value)
    assert len(places) == 1 and places[0].startswith(owner + ":"), f"{value!r} written at {places}"


def test_the_literal_finder_sees_literals_and_skips_docstrings():
    # "onnx-nms" is an export flavour named in several modules' code; the module docstring of data/coco
    # names instances_val2017.json without being counted above
    assert len(literal_places("onnx-nms")) >= 2
    with open(os.path.join(PACKAGE_DIR, "data", "coco.py"), encoding="utf-8") as handle:
        assert coco.ANNOTATION_FILE_NAME in handle.read().split("ANNOTATION_FILE_NAME =")[0]


def _scorer_actions():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for verb, sub in subparsers.choices.items():
        for action in sub._actions:
            if "--scorer" in action.option_strings:
                yield verb, action


def test_every_scorer_option_offers_evaluate_scorers_with_its_default():
    found = dict(_scorer_actions())
    assert {"evaluate", "postprocess", "reproduce"} <= set(found)
    for verb, action in found.items():
        assert tuple(action.choices) == evaluate.SCORERS, verb
        assert action.default == evaluate.DEFAULT_SCORER, verb


def test_the_coco_layout_is_the_one_the_spec_cites():
    val2017 = load_recipe_spec()["acceptance"]["val2017"]
    assert coco.ANNOTATION_RELPATH == val2017["annotation_file"]
    assert coco.IMAGE_DIR_NAME == val2017["image_dir"]
    assert coco.coco_annotation_path("root") == os.path.join("root", *val2017["annotation_file"].split("/"))
