"""Path roles (issue 19, rule 1): an output that is an input, or lies inside an input folder, is refused
before any work, for every verb; the roles come from each verb's argument declarations."""
import argparse
import hashlib
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsaf_repro.cli import build_parser, main
from fsaf_repro.errors import PathRoleError
from fsaf_repro.pathroles import INPUT, OUTPUT, RolePath, check_path_roles, declared_paths
from fsaf_repro.reproduce import run_reproduce
from fsaf_repro.reproduce_options import ReproduceOptions


def _verbs():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices.items())


def _roles(parser):
    return {(max(a.option_strings, key=len) if a.option_strings else a.dest): a.type.path_role
            for a in parser._actions if getattr(a.type, "path_role", None)}


# What each verb declares (read off its parser): a path argument without a role would escape the rule.
EXPECTED_ROLES = {
    "make-checkpoint": {"output": OUTPUT},
    "export": {"--checkpoint": INPUT, "--output": OUTPUT},
    "convert": {"onnx": INPUT, "--out-dir": OUTPUT},
    "make-dataset": {"--out": OUTPUT},
    "preprocess": {"--annotations": INPUT, "--images": INPUT, "--out": OUTPUT, "--bin-info": OUTPUT,
                   "--jpg-info": OUTPUT},
    "info": {"--annotations": INPUT, "--images": INPUT, "--bin-dir": INPUT, "--bin-info": OUTPUT,
             "--jpg-info": OUTPUT},
    "infer": {"--annotations": INPUT, "--images": INPUT, "--model": INPUT, "--out": OUTPUT, "--perf-out": OUTPUT},
    "postprocess": {"--annotations": INPUT, "--images": INPUT, "--manifest": INPUT, "--outputs": INPUT,
                    "--labels-npy": INPUT, "--results": OUTPUT},
    "merge": {"parts": INPUT, "--out": OUTPUT},
    "evaluate": {"--annotations": INPUT, "--results": INPUT, "--metrics-out": OUTPUT},
    "perf": {"--model": INPUT, "--benchmark-info": INPUT, "--from-benchmark": INPUT, "--from-ais-bench": INPUT,
             "--workdir": OUTPUT, "--out": OUTPUT},
    "gates": {"records": INPUT},
    "reproduce": {"--checkpoint": INPUT, "--coco-root": INPUT, "--extra-perf": INPUT, "--run-dir": OUTPUT},
}


def test_every_verb_declares_the_role_of_each_path():
    verbs = dict(_verbs())
    assert set(verbs) == set(EXPECTED_ROLES)
    for verb, parser in verbs.items():
        assert _roles(parser) == EXPECTED_ROLES[verb], verb


@pytest.mark.parametrize("verb", sorted(v for v, roles in EXPECTED_ROLES.items()
                                        if INPUT in roles.values() and OUTPUT in roles.values()))
def test_each_output_of_each_verb_is_refused_over_each_input(verb, tmp_path):
    # every (output, input) pair of the verb's declaration, through the check cli.main runs after parsing
    parser = dict(_verbs())[verb]
    inputs = [a for a in parser._actions if getattr(a.type, "path_role", None) == INPUT]
    outputs = [a for a in parser._actions if getattr(a.type, "path_role", None) == OUTPUT]
    target = tmp_path / "data"
    target.mkdir()
    (target / "file.json").write_text("[]")
    for out in outputs:
        for inp in inputs:
            folder = getattr(inp.type, "path_form", "file") == "dir"
            source = str(target) if folder else str(target / "file.json")
            args = argparse.Namespace(**{a.dest: None for a in parser._actions})
            setattr(args, inp.dest, [source] if inp.nargs in ("*", "+") or inp.default == [] else source)
            written = str(target / "sub" / "x") if folder else source
            setattr(args, out.dest, written)
            with pytest.raises(PathRoleError) as refused:
                check_path_roles(declared_paths(parser, args))
            message = str(refused.value)
            assert "\n" not in message and source in message and written in message
            assert max(out.option_strings or [out.dest], key=len) in message


def _digests(*paths):
    digests = {}
    for path in paths:
        for root, _, names in os.walk(path) if os.path.isdir(path) else [(os.path.dirname(path), [], [path])]:
            for name in names:
                full = os.path.join(root, name)
                with open(full, "rb") as handle:
                    digests[full] = hashlib.sha256(handle.read()).hexdigest()
    return digests


@pytest.fixture
def data(tmp_path):
    images = tmp_path / "val2017"
    images.mkdir()
    (images / "000000000001.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    ann = tmp_path / "instances_val2017.json"
    ann.write_text('{"images": [], "annotations": [], "categories": []}')
    results = tmp_path / "results.json"
    results.write_text('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]')
    checkpoint = tmp_path / "fsaf.pth"
    checkpoint.write_bytes(b"not a checkpoint, but precious")
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "val2017").mkdir()
    (coco / "annotations" / "instances_val2017.json").write_text('{"images": [], "annotations": []}')
    return {"images": str(images), "ann": str(ann), "results": str(results), "checkpoint": str(checkpoint),
            "coco": str(coco), "tmp": str(tmp_path)}


# The cases of issue 19: each output names an input; refused with both options named, nothing changed.
ISSUE_CASES = [
    ("infer --annotations {ann} --images {images} --backend null --out {ann}", "--out", "--annotations"),
    ("export --checkpoint {checkpoint} --output {checkpoint}", "--output", "--checkpoint"),
    ("evaluate --annotations {ann} --results {results} --metrics-out {results}", "--metrics-out", "--results"),
    ("preprocess --annotations {ann} --images {images} --out {tmp}/bins --bin-info {ann}", "--bin-info",
     "--annotations"),
    ("preprocess --annotations {ann} --images {images} --out {images}", "--out", "--images"),
    ("preprocess --annotations {ann} --images {images} --out {images}/bins", "--out", "--images"),
    ("postprocess --annotations {ann} --outputs {results} --format npy --results {results}", "--results",
     "--outputs"),
    ("reproduce --coco-root {coco} --run-dir {coco}/run", "--run-dir", "--coco-root"),
    ("reproduce --coco-root {coco} --run-dir {coco}", "--run-dir", "--coco-root"),
]


@pytest.mark.parametrize("argv, output, source", ISSUE_CASES,
                         ids=[c[0].split(" ")[0] + " " + c[1] for c in ISSUE_CASES])
def test_issue_cases_are_refused_before_any_file_changes(argv, output, source, data, capsys):
    before = _digests(data["tmp"])
    assert main(argv.format(**data).split()) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and output in err and source in err and "Traceback" not in err
    assert _digests(data["tmp"]) == before


def test_reproduce_refuses_a_run_dir_inside_a_coco_root_from_the_environment(data):
    before = _digests(data["tmp"])
    with pytest.raises(PathRoleError, match="FSAF_COCO_ROOT"):
        run_reproduce(ReproduceOptions(run_dir=os.path.join(data["coco"], "runs", "x"),
                                       environ={"FSAF_COCO_ROOT": data["coco"]}, echo=False))
    assert _digests(data["tmp"]) == before and not os.path.exists(os.path.join(data["coco"], "runs"))


def test_outputs_elsewhere_and_inputs_inside_an_output_folder_pass(data):
    tmp = data["tmp"]
    check_path_roles([RolePath("--out", OUTPUT, os.path.join(tmp, "bins")),
                      RolePath("--images", INPUT, data["images"]),
                      # an input file inside an output folder is not written over by the rule's writers
                      RolePath("--annotations", INPUT, os.path.join(tmp, "bins", "ann.json")),
                      RolePath("--onnx", INPUT, os.path.join(tmp, "model.onnx"))])


ALIASES = ("same", "symlink", "hardlink", "inside", "symlinked-folder")


def _alias(kind, data, index):
    """An output path that reaches the annotation file (or the image folder) another way (links made in a
    new folder: hypothesis runs its examples on one tmp_path)."""
    tmp = tempfile.mkdtemp(dir=data["tmp"], prefix="alias_")
    if kind == "same":
        return data["ann"], "--annotations"
    if kind == "symlink":
        link = os.path.join(tmp, f"link{index}.json")
        os.symlink(data["ann"], link)
        return link, "--annotations"
    if kind == "hardlink":
        link = os.path.join(tmp, f"hard{index}.json")
        os.link(data["ann"], link)
        return link, "--annotations"
    if kind == "inside":
        return os.path.join(data["images"], f"out{index}.json"), "--images"
    folder = os.path.join(tmp, f"images_link{index}")
    os.symlink(data["images"], folder)
    return os.path.join(folder, "000000000001.jpg"), "--images"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(ALIASES), verb=st.sampled_from(["infer", "evaluate", "preprocess-info"]),
       index=st.integers(min_value=0, max_value=10 ** 9))
def test_outputs_that_alias_an_input_are_refused_and_nothing_changes(kind, verb, index, data, capsys):
    out, source = _alias(kind, data, index)
    argv = {"infer": f"infer --annotations {data['ann']} --images {data['images']} --backend null --out {out}",
            "evaluate": f"evaluate --annotations {data['ann']} --results {data['results']} --metrics-out {out}",
            "preprocess-info": f"info --annotations {data['ann']} --images {data['images']} --jpg-info {out}",
            }[verb]
    if verb == "evaluate" and source == "--images":
        return  # evaluate has no image folder
    watched = [data["ann"], data["images"], data["results"]]
    before = _digests(*watched)
    assert main(argv.split()) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and source in err
    assert _digests(*watched) == before
