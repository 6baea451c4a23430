"""The recipe spec's shape: spec/recipe.schema.json (JSON Schema, the jsonschema package) types every
value of spec/recipe.json and requires its source, and the citations never enter a key
(fsaf_repro.spec: `spec_values`, `section_digest`)."""
import copy
import json
import os

import jsonschema
import pytest

from fsaf_repro import spec
from fsaf_repro.errors import SpecError
from tests.support import citations_edited

pytestmark = pytest.mark.unit

SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(spec.__file__)), "spec")


def _packaged():
    return copy.deepcopy(dict(spec.load_recipe_spec()))


def test_the_schema_is_a_valid_draft7_schema_and_the_packaged_spec_matches_it():
    with open(os.path.join(SPEC_DIR, "recipe.schema.json")) as handle:
        schema = json.load(handle)
    jsonschema.Draft7Validator.check_schema(schema)
    with open(os.path.join(SPEC_DIR, "recipe.json")) as handle:
        recipe = json.load(handle)
    assert list(jsonschema.Draft7Validator(schema).iter_errors(recipe)) == []
    spec.check_spec(recipe, "recipe.json")
    # the schema names every section of the spec (no section escapes it through additionalProperties)
    assert set(schema["required"]) == set(recipe)


@pytest.mark.parametrize("path, value, message", [
    (("model", "nms_pre"), 0, r"model\.nms_pre: 0 is less than the minimum of 1"),
    (("model", "score_threshold"), "0.05", r"model\.score_threshold: '0\.05' is not of type 'number'"),
    (("performance", "gates", 1, "min_ratio"), -1.6, r"performance\.gates\[1\]\.min_ratio"),
    (("accuracy", "npu_stats", "values"), [0.371] * 11, r"accuracy\.npu_stats\.values"),
    (("input", "mean_rgb"), [123.675, 116.28], r"input\.mean_rgb"),
])
def test_the_schema_refuses_a_mistyped_value_naming_it(path, value, message):
    recipe = _packaged()
    node = recipe
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(SpecError, match=message):
        spec.check_spec(recipe, "edited spec")


@pytest.mark.parametrize("path", [("model", "source"), ("accuracy", "min_map", "source"),
                                  ("_sources", "coco_classes"), ("acceptance", "val2017", "source"),
                                  ("performance", "gates", 0, "source")])
def test_every_value_must_have_a_source(path):
    recipe = _packaged()
    node = recipe
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    with pytest.raises(SpecError, match="source"):
        spec.check_spec(recipe, "edited spec")


def test_uncited_values_names_each_value_without_a_source_at_any_level():
    recipe = _packaged()
    assert spec.uncited_values(recipe) == []
    del recipe["model"]["source"]
    recipe["_sources"].pop("coco_category_ids")
    uncited = spec.uncited_values(recipe)
    assert "model.nms_pre" in uncited and "model.strides" in uncited and "coco_category_ids" in uncited
    # a nested block's own source cites it even where its section has none
    recipe["model"]["source"] = "restored"
    del recipe["accuracy"]["source"]
    assert "accuracy.pytorch_map.value" not in spec.uncited_values(recipe)
    assert "accuracy.metric" in spec.uncited_values(recipe)


def test_a_citation_edit_keeps_every_section_digest_and_a_value_edit_moves_it():
    recipe = _packaged()
    edited = citations_edited(recipe)
    changed = [s for s in recipe if not spec.is_citation(s) and recipe[s] != edited[s]]
    assert len(changed) >= 10  # the edit reaches the sections' citations, nested ones included
    for section in changed:
        assert spec.section_digest(edited[section]) == spec.section_digest(recipe[section]), section
    edited["model"]["nms_pre"] += 1
    assert spec.section_digest(edited["model"]) != spec.section_digest(recipe["model"])
    assert "source" not in spec.spec_values(recipe["model"])
    assert spec.spec_values(recipe["parity"])["fp16_om_min_match_rate"] == recipe["parity"]["fp16_om_min_match_rate"]
    assert "fp16_om_source" not in spec.spec_values(recipe["parity"])
