"""The recipe's expected values and constants, loaded from packaged data.

`spec/recipe.json` records every number the recipe claims (mAP, fps table, gates), the model's
constants and the tolerances, each beside its source. Code and tests read them from here.
"""
import contextlib
import hashlib
import json
import pkgutil
from collections.abc import Mapping
from typing import Any, Dict, Iterator, List, Set

from .errors import SpecError

_CACHE = {}
# Process-wide on purpose (not thread-local): a stage's image loader threads read the spec too.
# "override": a spec standing in for the packaged one; "reads": the set recording section reads.
_STATE = {"override": None, "reads": None}


def _packaged_spec():
    if "recipe" not in _CACHE:
        raw = pkgutil.get_data("fsaf_repro", "spec/recipe.json")
        if raw is None:
            raise SpecError("fsaf_repro/spec/recipe.json is missing from the installed package")
        from .jsonio import mapping, parse_json
        _CACHE["recipe"] = parse_json(raw, SpecError, "packaged spec fsaf_repro/spec/recipe.json", mapping())
    return _CACHE["recipe"]


class _RecordingSpec(Mapping):
    """The spec, noting the name of each top-level section read through it."""

    def __init__(self, recipe, reads):
        self._recipe = recipe
        self._reads = reads

    def __getitem__(self, section):
        self._reads.add(section)
        return self._recipe[section]

    def __iter__(self):
        return iter(self._recipe)

    def __len__(self):
        return len(self._recipe)


def load_recipe_spec() -> Mapping:
    """Return the parsed `spec/recipe.json` (cached; callers must not mutate it), or the spec that
    `spec_override` put in its place."""
    recipe = _STATE["override"] if _STATE["override"] is not None else _packaged_spec()
    if _STATE["reads"] is not None:
        return _RecordingSpec(recipe, _STATE["reads"])
    return recipe


@contextlib.contextmanager
def spec_override(recipe: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """Within the block every reader sees `recipe` (a dict of the recipe.json layout) instead of the
    packaged spec: how a test asks what a run does under other tolerances or settings."""
    if not isinstance(recipe, dict):
        raise SpecError(f"a spec override must be a dict of the recipe.json layout, got {type(recipe).__name__}")
    previous = _STATE["override"]
    _STATE["override"] = recipe
    try:
        yield recipe
    finally:
        _STATE["override"] = previous


@contextlib.contextmanager
def recording_section_reads() -> Iterator[Set[str]]:
    """Yields a set that collects the names of the spec sections read within the block (from any
    thread). A reproduce stage runs its body inside one to prove its key covers what it read."""
    previous = _STATE["reads"]
    reads = set()
    _STATE["reads"] = reads
    try:
        yield reads
    finally:
        _STATE["reads"] = previous
        if previous is not None:
            previous.update(reads)  # an enclosing recorder sees the reads of the inner block too


def section_digest(value: Any) -> str:
    """sha256 of a spec section's value as canonical JSON: how a reuse key records what a step read."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_constants() -> Dict[str, Any]:
    return load_recipe_spec()["model"]


def input_constants() -> Dict[str, Any]:
    return load_recipe_spec()["input"]


def coco_class_names() -> List[str]:
    return list(load_recipe_spec()["coco_classes"])


def coco_category_ids() -> List[int]:
    return list(load_recipe_spec()["coco_category_ids"])


def parity_tolerances() -> Dict[str, Any]:
    return load_recipe_spec()["parity"]


def accuracy_reference() -> Dict[str, Any]:
    return load_recipe_spec()["accuracy"]


def performance_reference() -> Dict[str, Any]:
    return load_recipe_spec()["performance"]


def pins() -> Dict[str, Any]:
    return load_recipe_spec()["pins"]
