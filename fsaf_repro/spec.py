"""The recipe's expected values and constants, loaded from packaged data.

`spec/recipe.json` records every number the recipe claims (mAP, fps table, gates), the model's
constants and the tolerances, each beside its source. Code and tests read them from here.
"""
import json
import pkgutil

from .errors import SpecError

_CACHE = {}


def load_recipe_spec():
    """Return the parsed `spec/recipe.json` (cached; callers must not mutate it)."""
    if "recipe" not in _CACHE:
        raw = pkgutil.get_data("fsaf_repro", "spec/recipe.json")
        if raw is None:
            raise SpecError("fsaf_repro/spec/recipe.json is missing from the installed package")
        try:
            _CACHE["recipe"] = json.loads(raw.decode("utf-8"))
        except ValueError as exc:
            raise SpecError("fsaf_repro/spec/recipe.json is not valid JSON: {}".format(exc))
    return _CACHE["recipe"]


def model_constants():
    return load_recipe_spec()["model"]


def input_constants():
    return load_recipe_spec()["input"]


def coco_class_names():
    return list(load_recipe_spec()["coco_classes"])


def coco_category_ids():
    return list(load_recipe_spec()["coco_category_ids"])


def parity_tolerances():
    return load_recipe_spec()["parity"]


def accuracy_reference():
    return load_recipe_spec()["accuracy"]


def performance_reference():
    return load_recipe_spec()["performance"]


def pins():
    return load_recipe_spec()["pins"]
