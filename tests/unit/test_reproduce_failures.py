"""A run that survives one failing stage, and options refused before any stage runs.

- A misspelt backend option is refused, naming the known ones (it must not enter a key unread).
- A bad precision mode is refused when the options are made: no run directory, no stage.
- execute: a failed stage skips only its dependents; the report is declared again over what finished.
- End to end (on a copy of the session's tiny run): a backend that raises mid-run leaves a rendered
  report with its failure row, every other backend's results, and exit status 1; --fail-fast stops.
"""
import json
import os

import pytest

from fsaf_repro import backends
from fsaf_repro.backends.base import empty_outputs
from fsaf_repro.cli import build_parser, main
from fsaf_repro.errors import BackendError, BackendOptionError, OptionError
from fsaf_repro.reproduce import run_reproduce
from fsaf_repro.reproduce_execute import execute
from fsaf_repro.reproduce_options import ReproduceOptions, declarations
from fsaf_repro.reproduce_plan import RunState
from fsaf_repro.stagebook import Stage, StageBook
from tests.conftest import tiny_run_options


@pytest.mark.parametrize("misspelt, known", [("thread", "threads"), ("grpah_optimization", "graph_optimization")])
def test_a_misspelt_backend_option_is_refused_naming_the_known_ones(misspelt, known):
    with pytest.raises(BackendOptionError) as refused:
        backends.create_backend("onnxruntime", **{misspelt: 2})
    message = str(refused.value)
    assert misspelt in message and known in message and "known options" in message


def test_a_bad_precision_mode_is_refused_before_any_stage_runs(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(OptionError, match="--precision-mode"):
        run_reproduce(ReproduceOptions(run_dir=str(run_dir), precision_mode="bogus", environ={}, echo=False))
    assert not run_dir.exists()
    with pytest.raises(SystemExit) as refused:
        main(["reproduce", "--run-dir", str(run_dir), "--precision-mode", "bogus"])
    assert refused.value.code == 2 and "--precision-mode" in capsys.readouterr().err
    assert not run_dir.exists()


def test_keep_going_is_the_default_and_fail_fast_turns_it_off():
    parser = build_parser()
    assert parser.parse_args(["reproduce"]).keep_going is True
    assert parser.parse_args(["reproduce", "--fail-fast"]).keep_going is False
    assert parser.parse_args(["reproduce", "--keep-going"]).keep_going is True
    with pytest.raises(SystemExit):
        parser.parse_args(["reproduce", "--keep-going", "--fail-fast"])
    assert ReproduceOptions().keep_going is True


def test_every_command_line_option_is_a_declared_field():
    reproduce = build_parser().parse_args(["reproduce"])
    declared = [name for name, _, spec in declarations() if spec.cli]
    assert set(declared) <= set(vars(reproduce)) and "precision_mode" in declared and "dry_run" in declared
    # a name the declarations do not have is refused, naming the known ones
    with pytest.raises(OptionError, match="known options"):
        ReproduceOptions.from_mapping({"precison_mode": "force_fp16"})


# --- execute on hand-made stages ------------------------------------------------------------------


def _write_body(ctx):
    path = ctx.outputs["out"]
    with open(path, "w") as handle:
        handle.write(json.dumps(ctx.params))
    return {"wrote": os.path.basename(path)}, [path]


def _failing_body(ctx):
    raise BackendError("the runtime crashed on batch 3\nsecond line of detail")


def _stages(run_dir, fail):
    def out(name):
        return {"out": os.path.join(run_dir, name.replace(":", "_") + ".json")}

    good = Stage("infer:good", _write_body, params={"n": 1}, outputs=out("infer:good"))
    bad = Stage("infer:bad", _failing_body if fail else _write_body, params={"n": 2}, outputs=out("infer:bad"))
    results = Stage("results:bad", _write_body, params={"n": 3}, outputs=out("results:bad"), upstream=("infer:bad",))

    def report(failures=None):
        failures = failures or {}
        finished = tuple(n for n in ("infer:good", "infer:bad", "results:bad") if n not in failures)
        stage = Stage("report", _write_body, params={"failures": sorted(failures)}, outputs=out("report"),
                      upstream=finished)
        stage.redeclare = report
        return stage

    return [good, bad, results, report()]


def test_a_failed_stage_skips_only_its_dependents_and_the_report_still_runs(tmp_path):
    run_dir = str(tmp_path)
    lines = []
    book = StageBook(run_dir, lines.append)
    state = execute(_stages(run_dir, fail=True), book, RunState(None, book))
    assert state.status == {"infer:good": "ran", "infer:bad": "failed", "report": "ran",
                            "results:bad": "skipped: upstream stage infer:bad did not finish"}
    failure = state.failures["infer:bad"]
    assert failure.status == "failed" and failure.reason == "BackendError: the runtime crashed on batch 3"
    with open(failure.log) as handle:
        assert "Traceback" in handle.read()
    assert state.failures["results:bad"].status == "skipped" and state.failures["results:bad"].log == failure.log
    with open(os.path.join(run_dir, "report.json")) as handle:
        assert json.load(handle)["failures"] == ["infer:bad", "results:bad"]
    assert any(line.startswith("failed: infer:bad") for line in lines)
    # fixed, the next run runs what failed and what it skipped, and reuses the rest
    book = StageBook(run_dir, lines.append)
    state = execute(_stages(run_dir, fail=False), book, RunState(None, book))
    assert state.status == {"infer:good": "reused", "infer:bad": "ran", "results:bad": "ran", "report": "ran"}


def test_fail_fast_stops_at_the_first_failure(tmp_path):
    book = StageBook(str(tmp_path), lambda line: None)
    with pytest.raises(BackendError, match="crashed"):
        execute(_stages(str(tmp_path), fail=True), book, RunState(None, book), keep_going=False)
    assert book.status == {"infer:good": "ran"}


# --- end to end: a backend that raises mid-run ----------------------------------------------------

CRASHING = "crashing-plugin"


class CrashingBackend(backends.Backend):
    """No model file; its first batch runs, the next raises, as a runtime that dies mid-run."""

    name = CRASHING

    def load(self, model_path):
        self.calls = 0
        return self

    def run(self, batch, image_hw=None):
        self.calls += 1
        if self.calls > 1:
            raise BackendError(f"{CRASHING}: the device stopped answering at batch {self.calls}")
        return empty_outputs(self.check_batch(batch))


@pytest.fixture
def crashing_backend():
    backends.register_backend(CRASHING, CrashingBackend)
    yield CrashingBackend
    backends.unregister_backend(CRASHING)


def _argv(options):
    argv = ["reproduce"]
    for name, value in sorted(options.items()):
        if name not in ("echo", "environ"):
            argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


def test_a_backend_that_raises_mid_run_leaves_a_report_with_its_failure_row(crashing_backend, tiny_run,
                                                                             tiny_run_copy, monkeypatch, capsys):
    monkeypatch.delenv("FSAF_CHECKPOINT", raising=False)
    monkeypatch.delenv("FSAF_COCO_ROOT", raising=False)
    options = tiny_run_options()
    others = options["backends"].split(",")
    options["backends"] += "," + CRASHING
    code = main(_argv(options) + ["--run-dir", tiny_run_copy])
    captured = capsys.readouterr()
    assert code == 1 and "report: " in captured.out
    # one line at the command line's boundary: the failed stage, its reason, its log
    expected = (f"fsaf-repro reproduce: error: 1 stage(s) failed, their dependents skipped, the others run: "
                f"infer:{CRASHING}: BackendError: {CRASHING}: the device stopped answering at batch 2 (log ")
    assert expected in captured.err and len(captured.err.strip().splitlines()) == 1
    with open(os.path.join(tiny_run_copy, "logs", "last_run.json")) as handle:
        last = json.load(handle)
    assert last["failed"][f"infer:{CRASHING}"]["status"] == "failed"
    assert last["failed"][f"results:{CRASHING}"]["status"] == "skipped"
    # every other backend's results are there, and in the report beside the failure row
    ran = [name for name in others if name in tiny_run[1]["metrics"]]
    assert ran and all(last["metrics"][name] == tiny_run[1]["metrics"][name] for name in ran)
    with open(os.path.join(tiny_run_copy, "report.md")) as handle:
        report = handle.read()
    row = next(line for line in report.splitlines() if line.startswith(f"| stage infer:{CRASHING} | failed |"))
    assert "the device stopped answering at batch 2" in row and "failed_infer_" + CRASHING in row
    assert all(f"| inference {name} | done |" in report for name in ran)
    # --fail-fast: the first failure ends the run (one line, exit 1) and the stages after it do not run
    code = main(_argv(options) + ["--run-dir", tiny_run_copy, "--fail-fast"])
    assert code == 1 and "the device stopped answering" in capsys.readouterr().err


def test_the_report_is_declared_again_over_the_stages_that_finished(tmp_path):
    from fsaf_repro.reproduce_config import HostProbes, resolve_config
    from fsaf_repro.reproduce_execute import StageFailure
    from fsaf_repro.reproduce_plan import plan

    config = resolve_config(ReproduceOptions(run_dir=str(tmp_path / "run"), environ={}, backends="torch,onnxruntime",
                                             threads=1, perf_threads=1, fit_steps=0))
    report = next(s for s in plan(config, HostProbes(atc=None, unavailable={})) if s.name == "report")
    assert "failures" not in report.params  # a run without a failure keys its report as before
    failed = StageFailure("failed", "BackendError: gone", "logs/failed_infer_onnxruntime.log")
    lost = {"infer:onnxruntime": failed, "results:onnxruntime": StageFailure("skipped", "upstream", failed.log),
            "evaluate:onnxruntime": StageFailure("skipped", "upstream", failed.log)}
    again = report.redeclare(lost)
    assert again.skipped is None and not set(lost) & set(again.upstream) and "perf:onnxruntime" in again.upstream
    assert again.params["dataset_backends"] == ["torch"] and "metrics:onnxruntime" not in again.inputs
    assert again.params["failures"]["infer:onnxruntime"] == failed.as_record()
    rows = dict((row["name"], row) for row in again.params["backends"].args[0])
    assert rows["onnxruntime"]["status"] == "failed" and "BackendError: gone" in rows["onnxruntime"]["reason"]
    # without the data stage's image set (or the checkpoint) there is nothing to report on
    assert "needs data" in report.redeclare({"data": failed}).skipped
    assert "needs checkpoint" in report.redeclare({"checkpoint": failed}).skipped
