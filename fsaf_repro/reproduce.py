"""`fsaf-repro reproduce`: every step of the recipe this host can run, into one run directory.

checkpoint -> export ONNX (onnx-nms, raw, ascend-nms) -> [atc -> om] -> data -> inference per backend
(fsaf_repro.runner) -> score threshold -> evaluate -> throughput -> stage parity -> report.

Inputs: a checkpoint (--checkpoint / FSAF_CHECKPOINT) and a COCO root (--coco-root / FSAF_COCO_ROOT,
holding val2017/ and annotations/instances_val2017.json). What is not given is generated: weights fitted
on generated shapes (or seeded ones, --fit-steps 0) written in the official checkpoint layout, and a
synthetic COCO-format set. With neither given this is the *embedded default*: a reduced input size and a
few generated images, a few minutes on a small CPU (most of it the fit); its mAP means nothing about the
recipe.

The run is options, configure, plan, execute, each in its module:
- fsaf_repro.reproduce_options: ReproduceOptions, every option declared once (the CLI is generated
  from it) and checked when the record is made;
- fsaf_repro.reproduce_config: resolve_config (options, environment, defaults -> a frozen RunConfig,
  with the inputs read late checked first) and probe_host (atc, the runtimes, the soc version);
- fsaf_repro.reproduce_plan: plan (the stages, each declared; a step this host cannot run is an entry
  with its reason) and the Late values;
- fsaf_repro.reproduce_execute: execute (key each stage, reuse or run it; a failed stage skips only its
  dependents) and dry_run (what a run would do, and why).
Stage bodies are in fsaf_repro.stages; the stage book (keys, reuse, stages.json) in fsaf_repro.stagebook.
"""
import os
import sys
import time

from . import __version__
from .fileio import atomic_write_json
from .locking import run_lock
from .pathroles import INPUT, OUTPUT, RolePath, check_path_roles
from .reproduce_config import resolved_fit_steps, default_run_dir, probe_host, resolve_config, resolve_inputs
from .reproduce_execute import PlannedStage, dry_run, execute
from .reproduce_options import INPUT_DIR, INPUT_FILE, ReproduceOptions, declarations, spell
from .reproduce_plan import RunState, plan
from .report import REPORT_NAME
from .runlog import RunLog
from .stagebook import StageBook
from .torch_threads import set_intra_op_threads


def run_reproduce(options: ReproduceOptions):
    """Run the pipeline (or, with options.dry_run, only say what it would do); returns a summary dict
    (run_dir, report path, stage statuses, skips, failures, metrics). torch's thread count
    (process-wide, set by the `threads` option) is restored."""
    import torch
    checkpoint, coco_root = resolve_inputs(options.checkpoint, options.coco_root, options.environ)
    fit_steps = resolved_fit_steps(options.fit_steps, checkpoint)
    run_dir = os.path.abspath(options.run_dir or default_run_dir(checkpoint is None and coco_root is None,
                                                                 checkpoint, coco_root, fit_steps))
    _check_roles(options, run_dir, checkpoint, coco_root)
    # one writer per run directory: a second run on it refuses at once (fsaf_repro.locking)
    with run_lock(run_dir, "reproduce"):
        torch_threads = torch.get_num_threads()
        try:
            return _configure_plan_execute(options, run_dir)
        finally:
            set_intra_op_threads(torch_threads)


def _check_roles(options, run_dir, checkpoint, coco_root):
    """The run directory is not an input, nor inside one: the inputs are the options declared as input
    paths, with the values resolved from the environment where their declaration names a variable."""
    resolved = {"checkpoint": checkpoint, "coco_root": coco_root}
    roles = [RolePath(spell("run_dir"), OUTPUT, run_dir)]
    for name, _, spec in declarations():
        if spec.path in (INPUT_FILE, INPUT_DIR):
            value = resolved[name] if name in resolved else getattr(options, name)
            paths = value if isinstance(value, tuple) else () if value is None else (value,)
            option = spell(name) + (f" (or ${spec.env})" if spec.env else "")
            roles.extend(RolePath(option, INPUT, str(path)) for path in paths)
    check_path_roles(roles, "reproduce")


def _configure_plan_execute(options, run_dir):
    wall_start = time.time()
    config = resolve_config(options)
    if config.threads:
        set_intra_op_threads(config.threads)  # also for the export traces
    if not os.path.isdir(config.run_dir):
        os.makedirs(config.run_dir)
    log = RunLog(config.run_dir, echo=config.echo)
    book = StageBook(config.run_dir, log)
    stages = plan(config, probe_host(config))
    if options.dry_run:
        planned = dry_run(stages, book, RunState(config, book))
        log("dry run (nothing runs): " + PlannedStage("stage", "key", "action", "why").line())
        for entry in planned:
            log("dry run: " + entry.line())
        return {"run_dir": config.run_dir, "dry_run": True, "plan": [entry.__dict__ for entry in planned]}
    log(f"run directory {config.run_dir} (fsaf-repro {__version__}, python {sys.version.split()[0]})")
    state = execute(stages, book, RunState(config, book), keep_going=config.keep_going)
    log("checkpoint {} (sha256 {}{})".format(config.checkpoint_path, book.digest(config.checkpoint_path)[:16],
                                             ", fitted on generated shapes" if config.fitted else
                                             ", seeded weights" if config.seeded else "")
        if os.path.isfile(config.checkpoint_path) else f"checkpoint {config.checkpoint_path} was not made")
    return _summary(config, stages, state, book, time.time() - wall_start)


def _summary(config, stages, state, book, wall):
    from .evaluate import load_metrics
    report_path = config.path(REPORT_NAME) if book.status.get("report") else None
    stage_status = dict(book.status, **dict((name, "failed") for name, failure in state.failures.items()
                                            if failure.status == "failed"))
    ran = sorted(n for n, s in stage_status.items() if s == "ran")
    reused = sorted(n for n, s in stage_status.items() if s == "reused")
    failed = dict((name, failure.as_record()) for name, failure in state.failures.items())
    failed_count = sum(1 for f in failed.values() if f["status"] == "failed")
    book.log(f"done in {wall:.1f} s: {len(ran)} stage(s) ran, {len(reused)} reused, {failed_count} failed; "
             f"report {report_path or '(not written)'}")
    finished = dict((s.name, s) for s in stages if s.skipped is None and s.name in book.status)
    metrics = dict((name.partition(":")[2], load_metrics(stage.outputs["metrics"])["stats"])
                   for name, stage in finished.items() if name.startswith("evaluate:"))
    summary = {"run_dir": config.run_dir, "report": report_path,
               "stages": stage_status, "failed": failed,
               "skipped": dict((s.label, s.skipped) for s in stages if s.skipped is not None),
               "backends_run": [n.partition(":")[2] for n in finished if n.startswith("infer:")],
               "metrics": metrics, "wall_seconds": wall, "embedded": config.embedded,
               "perf": config.path("perf.json"),
               "parity": finished["parity"].outputs["parity"] if "parity" in finished else None}
    atomic_write_json(config.path("logs", "last_run.json"), summary)
    return summary
