"""reproduce's plan (issue 10): configure, plan, execute, tested on the plan alone.

Plans are built for configs and host probes given here (no atc, runtimes or NPU needed) and keyed
without running anything (plan_keys, input files digested by their path): the stages a change of one
setting re-runs are those whose key it moves. Which stages a change must reach is written below from the
pipeline's design, not read from the plan's declarations.
"""
import copy
import hashlib
import inspect
import os

import pytest

from fsaf_repro.reproduce_config import HostProbes, RunConfig, resolve_config
from fsaf_repro.reproduce_execute import plan_keys
from fsaf_repro.reproduce_options import ReproduceOptions
from fsaf_repro.reproduce_plan import RunState, plan
from fsaf_repro.spec import load_recipe_spec
from fsaf_repro.stagebook import STAGE_VERSIONS

BACKENDS = ("torch", "onnxruntime")
ALL_STAGES = {"export", "data", "infer:torch", "results:torch", "evaluate:torch", "infer:onnxruntime",
              "results:onnxruntime", "evaluate:onnxruntime", "perf:torch", "perf:onnxruntime", "parity", "report"}
CPU_HOST = HostProbes(atc=None, unavailable={})


@pytest.fixture(scope="module")
def given(tmp_path_factory):
    """A checkpoint file and a small generated COCO root, given as --checkpoint / --coco-root."""
    from fsaf_repro.synthetic import make_synthetic_coco
    root = tmp_path_factory.mktemp("plan")
    checkpoint = root / "weights.pth"
    checkpoint.write_bytes(b"not read: the plan's keys digest files by path here")
    make_synthetic_coco(str(root / "coco"), num_images=3, seed=0)
    return {"checkpoint": str(checkpoint), "coco_root": str(root / "coco"), "run_dir": str(root / "run")}


def _config(given, **changes):
    options = dict(given, backends=",".join(BACKENDS), batch_sizes="1,2", height=128, width=192, threads=1,
                   perf_threads=1, environ={}, npu_present=False)
    options.update(changes)
    return resolve_config(ReproduceOptions(**options))


def _path_digest(path):
    return hashlib.sha256(str(path).encode("utf-8")).hexdigest()


def _keys(config, probes=CPU_HOST, recipe=None):
    return plan_keys(plan(config, probes), RunState(config), recipe=recipe, digest=_path_digest)


def _rerun_by(before, after):
    assert set(before) == set(after)
    return set(name for name in before if before[name] != after[name])


def _spec_with(section, key, value):
    recipe = copy.deepcopy(dict(load_recipe_spec()))
    assert recipe[section][key] != value, "the case must change the spec"
    recipe[section][key] = value
    return recipe


def test_the_config_is_frozen_and_resolved_once(given):
    config = _config(given)
    assert isinstance(config, RunConfig)
    with pytest.raises(AttributeError):
        config.score_threshold = 0.5
    assert config.score_threshold == load_recipe_spec()["model"]["score_threshold"]
    assert config.batch_sizes == (1, 2) and config.infer_batch_size == 1 and config.backends == BACKENDS
    assert not config.seeded and not config.generated and config.trusted is False


def test_the_same_config_gives_the_same_keys(given):
    keys = _keys(_config(given))
    assert set(keys) == ALL_STAGES
    assert _keys(_config(given)) == keys


def test_only_the_score_threshold_reruns_results_evaluate_and_report(given):
    before = _keys(_config(given))
    after = _keys(_config(given, score_threshold=0.3))
    assert _rerun_by(before, after) == {"results:torch", "results:onnxruntime", "evaluate:torch",
                                        "evaluate:onnxruntime", "report"}


@pytest.mark.parametrize("key, value", [("match_iou", 0.98), ("fp16_om_box_abs_tol_px", 1.0),
                                        ("fp16_om_min_match_rate", 0.5), ("score_abs_tol", 0.5)])
def test_a_parity_tolerance_reruns_parity_and_report(given, key, value):
    config = _config(given)
    before = _keys(config)
    after = _keys(config, recipe=_spec_with("parity", key, value))
    assert _rerun_by(before, after) == {"parity", "report"}


def test_throughput_settings_rerun_only_the_perf_stages_and_report(given):
    before = _keys(_config(given))
    assert _rerun_by(before, _keys(_config(given, perf_loops=5))) == {"perf:torch", "perf:onnxruntime", "report"}
    assert _rerun_by(before, _keys(_config(given, perf_threads=2))) == {"perf:torch", "perf:onnxruntime",
                                                                        "report"}


def test_the_scorer_reruns_evaluate_and_report(given):
    before = _keys(_config(given))
    assert _rerun_by(before, _keys(_config(given, scorer="faster-coco-eval"))) == {
        "evaluate:torch", "evaluate:onnxruntime", "report"}


def test_steps_this_host_cannot_run_are_entries_with_their_reason(given):
    config = _config(given, backends="torch,onnxruntime,aclruntime")
    entries = dict((s.name, s) for s in plan(config, HostProbes(atc=None, unavailable={
        "aclruntime": "the aclruntime package is not installed"})))
    assert "atc is not on PATH" in entries["convert"].skipped
    assert entries["infer:aclruntime"].skipped == "unavailable: the aclruntime package is not installed"
    assert entries["infer:aclruntime"].label == "aclruntime"
    assert entries["export"].skipped is None and entries["report"].skipped is None
    report = entries["report"]
    assert "convert" not in report.upstream and "infer:aclruntime" not in report.upstream
    no_soc = dict((s.name, s) for s in plan(config, HostProbes(atc="/opt/atc", unavailable={},
                                                                soc_error="npu-smi: not found")))
    assert "soc version is unknown: npu-smi: not found" in no_soc["convert"].skipped
    no_torch = dict((s.name, s) for s in plan(_config(given), HostProbes(atc=None, unavailable={
        "torch": "torch is not installed"})))
    assert "needs the torch reference" in no_torch["parity"].skipped
    assert no_torch["infer:torch"].skipped == "unavailable: torch is not installed"


def test_with_atc_and_a_soc_the_om_backend_is_planned_on_converts_oms(given):
    config = _config(given, backends="torch,onnxruntime,benchmark")
    stages = dict((s.name, s) for s in plan(config, HostProbes(atc="/opt/atc", unavailable={},
                                                              soc_version="Ascend310P3")))
    assert stages["convert"].skipped is None
    convert = stages["convert"].params
    assert convert["batch_sizes"] == [1, 2] and convert["soc_version"] == "Ascend310P3"
    for name in ("infer:benchmark", "results:benchmark", "evaluate:benchmark", "perf:benchmark"):
        assert stages[name].skipped is None, name
    assert "convert" in stages["infer:benchmark"].upstream and "convert" in stages["parity"].upstream
    perf = stages["perf:benchmark"].params
    assert perf["device"] == "310P" and perf["precision"] == "fp16"
    # the om side is told by its role, not by its label
    om_side = {"role": "om", "label": "benchmark (om, ascend-nms)", "backend": "benchmark"}
    assert om_side in stages["parity"].params["sides"]


def test_the_embedded_default_plans_the_checkpoint_and_dataset_first(given, tmp_path):
    config = resolve_config(ReproduceOptions(run_dir=str(tmp_path / "run"), environ={}, backends="torch,onnxruntime",
                            threads=1, perf_threads=1))
    assert config.embedded and config.trusted
    names = [s.name for s in plan(config, CPU_HOST)]
    assert names[:5] == ["checkpoint", "dataset", "export", "convert", "data"]
    assert set(names) == ALL_STAGES | {"checkpoint", "dataset", "convert"}


@pytest.mark.parametrize("embedded", [False, True], ids=["given", "embedded"])
def test_every_stage_declares_a_version_outputs_and_a_module_level_body(given, tmp_path, embedded):
    config = (resolve_config(ReproduceOptions(run_dir=str(tmp_path / "run"), environ={}, threads=1, perf_threads=1))
              if embedded
              else _config(given))
    stages = [s for s in plan(config, CPU_HOST) if s.skipped is None]
    assert len(stages) >= len(ALL_STAGES)
    for stage in stages:
        assert stage.version == STAGE_VERSIONS[stage.name.partition(":")[0]], stage.name
        assert stage.outputs, stage.name
        # module level: importable by name, no closure over the run's locals
        assert stage.body.__qualname__ == stage.body.__name__, stage.name
        assert inspect.getmodule(stage.body).__name__ == "fsaf_repro.stages"
        assert len(inspect.getsource(stage.body).splitlines()) <= 60, stage.name


# The fit (issue 11): without a checkpoint the run fits its weights on generated shapes; its key carries
# the fit's steps and thread count, and only what reads the weights (or the generated set) reruns.


def _embedded(tmp_path, **changes):
    options = dict(run_dir=str(tmp_path / "run"), backends=",".join(BACKENDS), batch_sizes="1,2", height=128,
                   width=192, threads=1, perf_threads=1, environ={}, npu_present=False)
    options.update(changes)
    return resolve_config(ReproduceOptions(**options))


def test_the_embedded_default_fits_its_weights_and_evaluates_the_classes_style(tmp_path):
    config = _embedded(tmp_path)
    assert config.fitted and config.fit_steps > 0
    stages = dict((s.name, s) for s in plan(config, CPU_HOST))
    fit = stages["checkpoint"]
    assert fit.body.__name__ == "run_fit"
    assert fit.params["fit"]["steps"] == config.fit_steps
    assert (fit.params["fit"]["height"], fit.params["fit"]["width"]) == (128, 192)
    # the fit trains on another seed than the set it is evaluated on
    assert fit.params["data_seed"] != stages["dataset"].params["seed"]
    assert stages["dataset"].params["style"] == "classes"
    seeded = dict((s.name, s) for s in plan(_embedded(tmp_path, fit_steps=0), CPU_HOST))
    assert seeded["checkpoint"].body.__name__ == "run_checkpoint" and seeded["dataset"].params["style"] == "default"


def test_a_given_checkpoint_is_never_fitted(given):
    config = _config(given, fit_steps=50)
    assert config.fit_steps == 0 and not config.fitted
    assert "checkpoint" not in _keys(config)


def test_more_fit_steps_rerun_the_fit_and_what_reads_the_weights_not_the_dataset(tmp_path):
    from fsaf_repro.synthetic import make_synthetic_coco
    config = _embedded(tmp_path, fit_steps=10)
    make_synthetic_coco(config.data_root, num_images=3, seed=config.seed, style="classes")  # what the data stage reads
    before = _keys(config)
    after = _keys(_embedded(tmp_path, fit_steps=20))
    rerun = _rerun_by(before, after)
    assert "checkpoint" in rerun and "export" in rerun and "infer:torch" in rerun and "report" in rerun
    assert "dataset" not in rerun and "data" not in rerun


def test_negative_fit_steps_are_refused(tmp_path):
    from fsaf_repro.errors import FsafReproError
    with pytest.raises(FsafReproError, match="--fit-steps"):
        _embedded(tmp_path, fit_steps=-1)


def test_the_embedded_default_also_runs_the_fp16_stand_in_and_a_real_run_does_not(tmp_path, given):
    from fsaf_repro.reproduce_options import DEFAULT_BACKENDS, EMBEDDED_EXTRA_BACKENDS
    embedded = resolve_config(ReproduceOptions(run_dir=str(tmp_path / "run"), environ={}, npu_present=False))
    assert embedded.backends == DEFAULT_BACKENDS + EMBEDDED_EXTRA_BACKENDS
    assert "fp16-emulated" in embedded.backends
    real = resolve_config(ReproduceOptions(environ={}, npu_present=False, **given))
    assert real.backends == DEFAULT_BACKENDS
    # its parity side is judged by the fp16 tolerances (the precision its class declares)
    sides = dict((s.name, s) for s in plan(embedded, CPU_HOST))["parity"].params["sides"]
    assert {"role": "checkpoint", "label": "fp16-emulated (checkpoint)", "backend": "fp16-emulated"} in sides


def test_reproduce_fits_as_long_as_make_checkpoint_does_by_default():
    from fsaf_repro.reproduce_options import DEFAULT_FIT_STEPS
    from fsaf_repro.train import DEFAULTS
    assert DEFAULT_FIT_STEPS == DEFAULTS["steps"]


def test_a_stage_that_reads_an_earlier_output_without_declaring_it_upstream_is_refused(tmp_path):
    from fsaf_repro.errors import FsafReproError
    from fsaf_repro.reproduce_plan import STAGE_ORDER
    from fsaf_repro.stagebook import Stage, check_edges, derived_upstream

    folder = str(tmp_path / "made")
    made = Stage("dataset", None, outputs={"root": folder})
    reader = Stage("data", None, inputs={"annotation": os.path.join(folder, "annotations", "a.json")})
    assert derived_upstream(reader, [made]) == ["dataset"]
    with pytest.raises(FsafReproError, match="reads the outputs of dataset without declaring them upstream"):
        check_edges([made, reader], STAGE_ORDER)
    declared = Stage("data", None, inputs=reader.inputs, upstream=("dataset",))
    check_edges([made, declared], STAGE_ORDER)
    with pytest.raises(FsafReproError, match="not an earlier stage"):
        check_edges([declared, made], STAGE_ORDER)
    # the stage order is checked against the edges too: a consumer listed before what it consumes
    with pytest.raises(FsafReproError, match="puts after it"):
        check_edges([Stage("report", None), Stage("export", None, upstream=("report",))], STAGE_ORDER)
