"""The stage book of `fsaf-repro reproduce`: stage declarations, their keys, reuse and records.

A stage declares what it reads (Stage); its key is derived from that declaration alone (stage_key),
and its body sees the spec only through the sections it declared (StageContext.spec), while a
recorder on the spec loader refuses a body that read any other section. So a stage's key cannot
drift from what the stage reads: a new read must be declared, and a declared read is keyed.
Which stages a run has, and what each declares, is fsaf_repro.reproduce's plan.
"""
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from . import __version__
from .errors import DataError, FsafReproError, ResultsError
from .fileio import atomic_write_json, file_sha256
from .jsonio import canonical_sha256, integer, load_json, mapping, nullable, obj, real_number, text_value
from .spec import section_digest

STAGES_FILE = "stages.json"


# stages.json as StageBook writes it (format 2): per stage its key, keyed fields, result record,
# output digests and seconds. A file of another shape is damaged like an unparsable one: moved aside.
STAGE_ENTRY = obj({"key": text_value(), "result": mapping(), "outputs": mapping(text_value())},
                  {"fields": mapping(), "seconds": nullable(real_number(minimum=0))})
STAGE_BOOK = obj({"stages": mapping(STAGE_ENTRY)}, {"format": integer()})


# Implementation version of each stage (by the part of its name before ':'). Bump a stage's number
# when a change to its body, or to the code it calls, changes what it writes: its key changes, so it
# and the stages after it run again. The package version is keyed beside it.
STAGE_VERSIONS = {"checkpoint": 1, "dataset": 1, "export": 1, "convert": 1, "data": 1, "infer": 1,
                  "results": 1, "evaluate": 2, "perf": 2, "parity": 2, "report": 3}


class Stage:
    """One stage's declaration: everything its outputs depend on, and the body that writes them.

    params: JSON values the body uses (ctx.params). inputs: label -> file path, or label -> {name: path}
    for a set of files (ctx.inputs); keyed by content. spec: names of the recipe spec sections the body
    reads (ctx.spec holds exactly these). upstream: earlier stages of this run whose records the body
    consumes beyond its input files (an image set, a model file); keyed by their keys. options: values
    for the body that do not change its outputs (a progress display, leave to unpickle a checkpoint);
    not keyed. outputs: label -> the path of each named file the body writes (ctx.outputs); what it
    records is the list it returns. `body(ctx)` returns (result dict, list of output paths).

    A value of params, inputs or options may be a `Late`: known only once earlier stages have run (the
    image set of the data stage, the om files of convert); `execute` resolves it just before keying.
    A step this host cannot run is a Stage with `skipped` set to the reason (no body, no key); `label`
    is the name it is reported under (the backend's name for a backend that cannot run).
    """

    def __init__(self, name: str, body: Optional[Callable[["StageContext"], Tuple[Dict[str, Any], List[str]]]],
                 params: Optional[Dict[str, Any]] = None, inputs: Optional[Dict[str, Any]] = None,
                 spec: Sequence[str] = (), upstream: Iterable[Optional[str]] = (),
                 options: Optional[Dict[str, Any]] = None, outputs: Optional[Dict[str, str]] = None,
                 skipped: Optional[str] = None, label: Optional[str] = None):
        self.name = name
        self.body = body
        self.params = dict(params or {})
        self.inputs = dict(inputs or {})
        self.spec = tuple(spec)
        self.upstream = tuple(u for u in upstream if u)
        self.options = dict(options or {})
        self.outputs = dict(outputs or {})
        self.skipped = skipped
        self.label = label or name
        # for a stage that still runs when an upstream stage failed (the report): failures -> the stage
        # declared again over the stages that finished; None: a failed upstream skips this stage
        self.redeclare = None  # type: Optional[Callable[[Dict[str, Any]], Stage]]
        self.version = None
        if skipped is None:
            base = name.partition(":")[0]
            if base not in STAGE_VERSIONS:
                raise FsafReproError(f"reproduce stage {name} has no implementation version in STAGE_VERSIONS")
            self.version = STAGE_VERSIONS[base]


def _static_paths(value):
    """The file paths of a declared input known at plan time (a Late value is known only later)."""
    if isinstance(value, dict):
        return [path for path in value.values() if isinstance(path, str)]
    return [value] if isinstance(value, str) else []


def derived_upstream(stage: "Stage", earlier: Sequence["Stage"]) -> List[str]:
    """The earlier stages whose declared outputs `stage` reads as inputs (an output file itself, or a
    file inside an output folder): the edges its declarations imply."""
    found = []
    for other in earlier:
        if other.skipped is not None:
            continue
        outputs = [os.path.abspath(path) for path in other.outputs.values()]
        for value in stage.inputs.values():
            for path in map(os.path.abspath, _static_paths(value)):
                if any(path == out or path.startswith(out.rstrip(os.sep) + os.sep) for out in outputs):
                    found.append(other.name)
    return sorted(set(found))


def check_edges(stages: Sequence["Stage"], order: Sequence[str]) -> None:
    """Refuse a plan whose hand-declared edges disagree with those derived from inputs and outputs: a
    stage that reads an earlier stage's output without declaring it upstream, directly or through
    another upstream stage (its key would not follow that stage), an upstream that is not an earlier
    stage of the plan, or a stage kind that `order` (the report's stage order) puts before one it
    consumes."""
    def rank(name):
        base = name.partition(":")[0]
        return order.index(base) if base in order else len(order)

    seen, reaches = {}, {}  # reaches: each stage's upstream stages, directly or through others
    for stage in stages:
        if stage.skipped is None:
            through = [reaches.get(name, set()) for name in stage.upstream]
            reaches[stage.name] = set(stage.upstream).union(*through)
            missing = sorted(set(derived_upstream(stage, list(seen.values()))) - reaches[stage.name])
            unknown = sorted(set(stage.upstream) - set(seen))
            faults = ([f"reads the outputs of {', '.join(missing)} without declaring them upstream"] if missing
                      else []) + ([f"declares upstream {', '.join(unknown)}, not an earlier stage of the plan"]
                                  if unknown else [])
            if faults:
                raise FsafReproError(f"reproduce stage {stage.name}: " + "; ".join(faults))
            late = [name for name in stage.upstream if rank(name) > rank(stage.name)]
            if late:
                raise FsafReproError(f"reproduce stage {stage.name} consumes {', '.join(late)}, which the stage order "
                                     f"{', '.join(order)} puts after it")
        seen[stage.name] = stage


def skipped_step(name: str, reason: str, label: Optional[str] = None) -> Stage:
    """A plan entry for a step this host cannot run, with the reason."""
    return Stage(name, None, skipped=reason, label=label)


class StageContext:
    """What a stage body is given: its declared params, inputs, outputs and spec sections, its options,
    the run's log and file digests (remembered for the run)."""

    def __init__(self, stage: Stage, recipe: Dict[str, Any], log: Optional[Callable[[str], None]] = None,
                 digest: Callable[[str], str] = file_sha256):
        self.params = dict(stage.params)
        self.inputs = dict(stage.inputs)
        self.outputs = dict(stage.outputs)
        self.spec = {section: recipe[section] for section in stage.spec}
        self.options = dict(stage.options)
        self.log = log or (lambda message: None)
        self.digest = digest


def stage_key(stage: Stage, recipe: Dict[str, Any], upstream_keys: Dict[str, str],
              digest: Callable[[str], str] = file_sha256) -> Tuple[str, Dict[str, Any]]:
    """(key, fields) of a declared stage: the sha256 of its declaration, with each input file by the
    sha256 of its content, each spec section by the sha256 of its value in `recipe`, each upstream
    stage by its key in `upstream_keys`. Nothing outside the declaration goes in."""
    inputs = {}
    for label, value in sorted(stage.inputs.items()):
        if value is None:
            inputs[label] = None
        elif isinstance(value, dict):
            inputs[label] = canonical_sha256({name: _input_digest(stage, label, path, digest)
                                          for name, path in value.items()})
        else:
            inputs[label] = _input_digest(stage, label, value, digest)
    sections = {}
    for section in stage.spec:
        if section not in recipe:
            raise FsafReproError(f"reproduce stage {stage.name} declares the spec section {section!r}, which the "
                                 "recipe spec (fsaf_repro/spec/recipe.json) does not have")
        sections[section] = section_digest(recipe[section])
    upstream = {}
    for name in stage.upstream:
        if name not in upstream_keys:
            raise FsafReproError(f"reproduce stage {stage.name} consumes stage {name}, which has not run in this "
                                 "run")
        upstream[name] = upstream_keys[name]
    fields = {"params": stage.params, "inputs": inputs, "spec": sections, "upstream": upstream,
              "implementation": {"stage": stage.version, "package": __version__}}
    return canonical_sha256(fields), fields


def _input_digest(stage, label, path, digest):
    try:
        return digest(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); it is input '{label}' of the reproduce "
                        f"stage {stage.name}") from None


_KIND_NAMES = {"inputs": "input", "params": "param", "spec": "spec section"}


def changed_parts(old, new):
    """Which declared reads differ between two stage records' fields, for the log."""
    if not isinstance(old, dict) or set(old) != set(new):
        return ["stage record of another layout"]
    parts = []
    for kind in ("params", "inputs", "spec", "upstream"):
        before, after = old.get(kind) or {}, new[kind]
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                parts.append(f"{_KIND_NAMES.get(kind, kind)} {name}")
    if old.get("implementation") != new["implementation"]:
        parts.append("implementation version")
    return parts


def under_spec_sections(stage_name: str, sections: Sequence[str], make: Callable[[], Any]) -> Any:
    """`make()`, refused when it read a spec section outside `sections`: for a value that is built
    beside a stage and consumed by the stages after it (which key the stage, not the value)."""
    from .spec import recording_section_reads
    with recording_section_reads() as read:
        value = make()
    undeclared = sorted(read - set(sections))
    if undeclared:
        raise FsafReproError(_UNDECLARED.format(stage_name, ", ".join(undeclared)))
    return value


# a constant template: both the stage runner and under_spec_sections fill it in
_UNDECLARED = ("reproduce stage {} read the spec section(s) {} without declaring them, so its key does not "
               "cover them (fsaf_repro/reproduce.py: add them to the stage's spec sections)")


class _Digests:
    """file_sha256 remembered per file identity (path, inode, size, mtime) for one run: a stage's
    inputs are often the same files as another's (images, models). An atomically replaced or edited
    file has a new identity, so it is hashed again."""

    def __init__(self):
        self.known = {}

    def __call__(self, path):
        path = os.path.abspath(str(path))
        status = os.stat(path)
        identity = (path, status.st_ino, status.st_size, status.st_mtime_ns)
        if identity not in self.known:
            self.known[identity] = file_sha256(path)
        return self.known[identity]


class StageBook:
    """`<run dir>/stages.json`: for each finished stage its key, the fields hashed into it, its
    result record and the sha256 of each output file (paths relative to the run directory).

    `recipe` is the spec the keys are derived from (default: the loaded one, see fsaf_repro.spec)."""

    def __init__(self, run_dir: str, log: Callable[[str], None], recipe: Optional[Dict[str, Any]] = None):
        from .spec import load_recipe_spec
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, STAGES_FILE)
        self.log = log
        self.recipe = load_recipe_spec() if recipe is None else recipe
        self.digest = _Digests()
        self.entries = {}
        self.status = {}
        self.keys = {}  # key of each stage run or reused in this run: what a later stage's upstream sees
        if os.path.exists(self.path):
            try:
                self.entries = load_json(self.path, ResultsError, "stage book", STAGE_BOOK)["stages"]
            except ResultsError as exc:
                self._move_aside(exc)
                self.entries = {}

    def _move_aside(self, exc):
        """Move an unreadable stages.json aside. It is written atomically, so only outside damage gets
        here: the damaged file is kept for inspection rather than overwritten with the first stage's record."""
        kept = f"{self.path}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}"
        base, copies = kept, 1
        while os.path.exists(kept):  # damaged twice within a second: keep both
            kept = f"{base}-{copies}"
            copies += 1
        try:
            os.replace(self.path, kept)
        except OSError as rename_error:
            raise FsafReproError(f"{self.path} is unreadable ({exc}) and could not be moved aside to {kept} "
                                 f"({rename_error.strerror or rename_error}); move or remove it to run every stage "
                                 "again")
        self.log(f"{self.path} is unreadable ({exc}), kept as {kept}: every stage runs again (inference resumes "
                 "from its own journal where its arguments match)")

    def _save(self):
        atomic_write_json(self.path, {"format": 2, "stages": self.entries})

    def _intact(self, entry):
        return not self.modified_outputs(entry)

    def modified_outputs(self, entry: Dict[str, Any]) -> List[str]:
        """The outputs of a stage record (relative to the run directory) that are missing or changed."""
        modified = []
        for rel, digest in sorted(entry.get("outputs", {}).items()):
            path = os.path.join(self.run_dir, rel)
            if not os.path.isfile(path) or self.digest(path) != digest:
                modified.append(rel)
        return modified

    def run(self, stage: Stage) -> Dict[str, Any]:
        """Reuse `stage` (a Stage) when its key and outputs are unchanged, else run its body.

        The body returns (result dict, list of output paths); both are recorded. Returns the result.
        A body that read a spec section its stage does not declare is an error: its key would not
        cover that section, so nothing it wrote is recorded for reuse.
        """
        from .spec import recording_section_reads
        name = stage.name
        key, fields = stage_key(stage, self.recipe, self.keys, self.digest)
        entry = self.entries.get(name)
        if entry is not None and entry.get("key") == key and self._intact(entry):
            self.status[name] = "reused"
            self.keys[name] = key
            self.log(f"reused: {name} (key {key[:12]})")
            return entry["result"]
        if entry is not None:
            if entry.get("key") != key:
                changed = ", ".join(changed_parts(entry.get("fields"), fields)) or "key"
                why = f"changed: {changed}"
            else:
                why = "an output is missing or was modified"
            self.log(f"re-running: {name} ({why})")
            # forget the old record first: a failure now must not leave a stale 'finished' stage
            del self.entries[name]
            self._save()
        started = time.time()
        with recording_section_reads() as read:
            result, outputs = stage.body(StageContext(stage, self.recipe, self.log, self.digest))
        undeclared = sorted(read - set(stage.spec))
        if undeclared:
            raise FsafReproError(_UNDECLARED.format(name, ", ".join(undeclared)))
        seconds = time.time() - started
        rels = {}
        for path in outputs:
            rel = os.path.relpath(os.path.abspath(path), self.run_dir)
            rels[rel.replace(os.sep, "/")] = self.digest(path)
        self.entries[name] = {"key": key, "fields": fields, "result": result, "outputs": rels,
                              "seconds": round(seconds, 3)}
        self._save()
        self.status[name] = "ran"
        self.keys[name] = key
        self.log(f"ran: {name} (key {key[:12]}, {seconds:.1f} s)")
        return result

    def key(self, name: str) -> Optional[str]:
        entry = self.entries.get(name)
        return entry["key"] if entry else None

    def seconds(self, name: str) -> Optional[float]:
        entry = self.entries.get(name)
        return entry.get("seconds") if entry else None


# Late values: known once earlier stages have run


class Late:
    """A declared value resolved at execution: `fn(state, *args)`, fn a module-level function."""

    def __init__(self, fn, *args):
        self.fn = fn
        self.args = args

    def __call__(self, state):
        return self.fn(state, *self.args)

    def __repr__(self):
        args = "".join(f", {a!r}" for a in self.args)
        return f"Late({self.fn.__name__}{args})"
