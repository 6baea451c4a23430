"""Execute a `reproduce` plan: key each declared stage, reuse or run it, isolate a failure; or say,
without running anything, what a run would do (dry_run).

A stage that fails skips only the stages downstream of it (DVC's on_error=skip_dependents): each
failure is recorded with its one-line reason and the log holding its traceback, the other stages
run, and a stage declared to tolerate a lost upstream (the report) is declared again over what
finished. With keep_going off (--fail-fast) the first failure stops the run, as make does.
"""
import os
import traceback
from dataclasses import dataclass
from typing import Dict, List, Optional

from .errors import FsafReproError
from .fileio import atomic_write_text, file_sha256
from .reproduce_plan import RunState, resolve_stage
from .stagebook import Stage, StageBook, changed_parts, stage_key


@dataclass(frozen=True)
class StageFailure:
    """Why a stage did not finish: `status` "failed" (its body raised; `log` holds the traceback) or
    "skipped" (an upstream stage failed; `log` is that stage's)."""

    status: str
    reason: str
    log: Optional[str]

    def as_record(self) -> Dict[str, Optional[str]]:
        return {"status": self.status, "reason": self.reason, "log": self.log}


def execute(stages: List[Stage], book: StageBook, state: RunState, keep_going: bool = True) -> RunState:
    """Run the plan in order: each stage is keyed from its declaration (Late values resolved now) and
    reused or run by the book; a skipped entry is logged and recorded with its reason. A failed stage
    is recorded in state.failures and skips its dependents (keep_going), or is raised (not keep_going)."""
    for stage in stages:
        if stage.skipped is not None:
            state.status[stage.name] = f"skipped: {stage.skipped}"
            book.log("skipped: {} ({})".format(stage.name if stage.label == stage.name
                                               else "backend " + stage.label, stage.skipped))
            continue
        lost = [name for name in stage.upstream if name in state.failures]
        if lost and stage.redeclare is not None:
            stage = stage.redeclare(dict(state.failures))  # declared again over the stages that finished
            if stage.skipped is not None:  # it cannot do without one of them
                _skip_dependent(stage, lost[0], book, state, stage.skipped)
                continue
        elif lost:
            _skip_dependent(stage, lost[0], book, state)
            continue
        try:
            state.results[stage.name] = book.run(resolve_stage(stage, state))
        except Exception as exc:  # noqa: BLE001 -- recorded with its traceback, reported, exit status 1
            if not keep_going:
                raise
            _record_failure(stage, exc, book, state)
            continue
        state.status[stage.name] = book.status[stage.name]
    return state


def _record_failure(stage, exc, book, state):
    log_path = os.path.join(book.run_dir, "logs", "failed_{}.log".format(stage.name.replace(":", "_")))
    atomic_write_text(log_path, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    lines = str(exc).strip().splitlines()
    reason = "{}: {}".format(type(exc).__name__, lines[0] if lines else "(no message)")
    state.failures[stage.name] = StageFailure("failed", reason, log_path)
    state.status[stage.name] = "failed"
    book.log(f"failed: {stage.name}: {reason} (traceback in {log_path}); its dependents are skipped")


def _skip_dependent(stage, upstream, book, state, reason=None):
    reason = reason or f"upstream stage {upstream} did not finish"
    state.failures[stage.name] = StageFailure("skipped", reason, state.failures[upstream].log)
    state.status[stage.name] = f"skipped: {reason}"
    book.log(f"skipped: {stage.name} ({reason})")


def plan_keys(stages, state, recipe=None, digest=file_sha256):
    """{stage name: key} of a plan without running it: for a plan whose input files exist (a given
    checkpoint and COCO root), with the results of earlier stages absent (None)."""
    from .spec import load_recipe_spec
    recipe = load_recipe_spec() if recipe is None else recipe
    for stage in stages:
        if stage.skipped is None:
            state.keys[stage.name] = stage_key(resolve_stage(stage, state), recipe, state.keys, digest)[0]
    return dict(state.keys)


@dataclass(frozen=True)
class PlannedStage:
    """One line of a dry run: the stage, its key (None: not known before an upstream stage runs), what
    a run would do ("reuse", "run" or "skip") and why."""

    name: str
    key: Optional[str]
    action: str
    why: str

    def line(self) -> str:
        return "{:<24} {:<12} {:<6} {}".format(self.name, (self.key or "-")[:12], self.action, self.why)


def dry_run(stages: List[Stage], book: StageBook, state: RunState) -> List[PlannedStage]:
    """What executing `stages` would do, from the book's records, running nothing: a stage whose key
    and outputs are unchanged would be reused; any other runs, and the reason names what changed
    (an input, a parameter, a spec section, an upstream stage that runs, a modified output)."""
    planned, running = [], set()
    for stage in stages:
        if stage.skipped is not None:
            planned.append(PlannedStage(stage.name, None, "skip", stage.skipped))
            continue
        pending = [name for name in stage.upstream if name in running]
        if pending:
            running.add(stage.name)
            planned.append(PlannedStage(stage.name, None, "run", "upstream {} {}".format(
                ", ".join(pending), "runs" if len(pending) == 1 else "run")))
            continue
        entry = _planned(stage, book, state)
        if entry.action == "run":
            running.add(stage.name)
        planned.append(entry)
    return planned


def _planned(stage, book, state):
    try:
        key, fields = stage_key(resolve_stage(stage, state), book.recipe, state.keys, book.digest)
    except (FsafReproError, OSError) as exc:  # an input that an earlier run has not made yet
        return PlannedStage(stage.name, None, "run", f"its inputs cannot be read yet ({exc})")
    entry = book.entries.get(stage.name)
    if entry is None:
        return PlannedStage(stage.name, key, "run", "never ran in this run directory")
    if entry.get("key") != key:
        changed = changed_parts(entry.get("fields"), fields)
        return PlannedStage(stage.name, key, "run", "changed: " + (", ".join(changed) or "key"))
    modified = book.modified_outputs(entry)
    if modified:
        return PlannedStage(stage.name, key, "run", "output(s) missing or modified: " + ", ".join(modified[:3]))
    state.keys[stage.name] = key
    state.results[stage.name] = entry["result"]
    return PlannedStage(stage.name, key, "reuse", "key and outputs unchanged")
