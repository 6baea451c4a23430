"""The recipe's expected values and constants, loaded from packaged data.

`spec/recipe.json` records every number the recipe claims (mAP, fps table, gates), the model's
constants and the tolerances, each beside its source. Code and tests read them from here.

A spec holds values and citations. The citations (CITATION_KEYS, and keys ending in
CITATION_SUFFIXES) are text for the reader of a number; `spec_values` leaves them out, and
`section_digest`, which keys every stage that reads a section, hashes the values alone: editing only a
source text reruns nothing. `spec/recipe.schema.json` (JSON Schema, checked with the jsonschema
package when the packaged spec is loaded) types every value and requires its source.
"""
import contextlib
import pkgutil
from collections.abc import Mapping
from typing import Any, Dict, Iterator, List, Set

from .errors import SpecError

SPEC_FILE = "spec/recipe.json"
SCHEMA_FILE = "spec/recipe.schema.json"
# Keys whose value is a citation (where a value comes from), never a value a stage computes with:
# `source` beside the values it cites, `_about` a block's description, `_sources` the sources of the
# bare top-level lists, `fp16_om_source` / `published_best_batch_note` a citation of their siblings.
CITATION_KEYS = ("source", "_about", "_sources")
CITATION_SUFFIXES = ("_source", "_note")

_CACHE = {}
# Process-wide on purpose (not thread-local): a stage's image loader threads read the spec too.
# "override": a spec standing in for the packaged one; "reads": the set recording section reads.
_STATE = {"override": None, "reads": None}


def _packaged_json(name):
    raw = pkgutil.get_data("fsaf_repro", name)
    if raw is None:
        raise SpecError(f"fsaf_repro/{name} is missing from the installed package")
    from .jsonio import mapping, parse_json
    return parse_json(raw, SpecError, f"packaged spec fsaf_repro/{name}", mapping())


def _packaged_spec():
    if "recipe" not in _CACHE:
        recipe = _packaged_json(SPEC_FILE)
        check_spec(recipe, "fsaf_repro/" + SPEC_FILE)
        _CACHE["recipe"] = recipe
    return _CACHE["recipe"]


def spec_schema() -> Dict[str, Any]:
    """The JSON Schema of recipe.json (spec/recipe.schema.json)."""
    if "schema" not in _CACHE:
        _CACHE["schema"] = _packaged_json(SCHEMA_FILE)
    return _CACHE["schema"]


def is_citation(key: str) -> bool:
    return key in CITATION_KEYS or key.endswith(CITATION_SUFFIXES)


def uncited_values(recipe: Mapping) -> List[str]:
    """Paths of the values with no source: neither on their own object nor on an enclosing one (a
    top-level list's source is its entry in `_sources`)."""
    listed = recipe.get("_sources") or {}
    found = []

    def walk(value, path, cited):
        if isinstance(value, Mapping):
            cited = cited or "source" in value
            for key, item in value.items():
                if not is_citation(str(key)):
                    walk(item, f"{path}.{key}" if path else str(key), cited)
        elif isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]", cited)
        elif not cited:
            found.append(path)

    for section, value in recipe.items():
        if not is_citation(str(section)):
            walk(value, str(section), section in listed)
    return found


def check_spec(recipe: Mapping, origin: str) -> None:
    """SpecError (one line, naming `origin` and the element) unless `recipe` matches the schema and
    every value has a source."""
    import jsonschema
    error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(spec_schema()).iter_errors(recipe))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        raise SpecError(f"{origin}: {where or 'the top level'}: {error.message} (schema fsaf_repro/{SCHEMA_FILE})")
    uncited = uncited_values(recipe)
    if uncited:
        raise SpecError(f"{origin}: no source for {', '.join(uncited)}: give each value a `source` beside it "
                        "or on its block")


def spec_values(value: Any) -> Any:
    """`value` without its citations (at any depth): what a stage computes with."""
    if isinstance(value, Mapping):
        return {key: spec_values(item) for key, item in value.items() if not is_citation(str(key))}
    if isinstance(value, (list, tuple)):
        return [spec_values(item) for item in value]
    return value


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
    """sha256 of a spec section's values (its citations left out) as canonical JSON: how a reuse key
    records what a step read, so that editing a source text alone changes no key."""
    from .jsonio import canonical_sha256
    return canonical_sha256(spec_values(value))


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
