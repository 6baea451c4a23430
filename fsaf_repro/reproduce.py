"""`fsaf-repro reproduce`: every step of the recipe this host can run, into one run directory.

checkpoint -> export ONNX (onnx-nms, raw, ascend-nms) -> [atc -> om] -> data -> inference per backend
(fsaf_repro.runner) -> score threshold -> evaluate -> throughput -> stage parity -> report.

Inputs: a checkpoint (--checkpoint / FSAF_CHECKPOINT) and a COCO root (--coco-root / FSAF_COCO_ROOT,
holding val2017/ and annotations/instances_val2017.json). What is not given is generated: seeded
weights written in the official checkpoint layout, and a synthetic COCO-format set. With neither
given this is the *embedded default*: a reduced input size and a few generated images, so that the
whole pipeline runs in a minute or two on a small CPU; its mAP means nothing about the recipe.

Every stage declares what it reads (a Stage: parameters, input files, the recipe spec sections, the
earlier stages it consumes, an implementation version); its key is the hash of that declaration, with
files by the sha256 of their bytes and spec sections by the hash of their values (stage_key), and a
body that reads a spec section it did not declare is refused. Each finished stage is recorded in
`<run dir>/stages.json` with the sha256 of its outputs. Run again with the same arguments, a stage
whose key and outputs are unchanged is reused (and says so); a changed input re-runs that stage, and
the stages after it see new input hashes and upstream keys.
A step this host cannot run (no atc, an absent runtime) is recorded as skipped with the reason.
"""
import argparse
import datetime
import hashlib
import inspect
import json
import os
import shutil
import sys
import time

from . import __version__
from .errors import CheckpointError, DataError, FsafReproError, JournalMismatch, ToolError
from .fileio import atomic_write_json, file_sha256
from .fileio import input_dir, input_file, output_dir
from .locking import run_lock
from .spec import section_digest
from .torch_threads import set_intra_op_threads

# The embedded default: small enough for about a minute on a 2-core CPU (project choice, issue 5).
EMBEDDED_NUM_IMAGES = 12
EMBEDDED_INPUT_HW = (256, 384)
EMBEDDED_BATCH_SIZES = (1, 2)
EMBEDDED_SEED = 0
DEFAULT_CPU_BATCH_SIZES = (1, 4)
DEFAULT_PERF_LOOPS = 2
DEFAULT_PERF_WARMUP = 1
DEFAULT_PARITY_IMAGES = 3

# Backends tried by default (those available on this host run, the others are listed as skipped).
DEFAULT_BACKENDS = ("torch", "onnxruntime", "aclruntime", "onnxruntime-cann")
ONNX_BACKENDS = ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "onnxruntime-cann")
OM_BACKENDS = ("aclruntime", "ais_bench", "benchmark")
FLAVOURS = ("onnx-nms", "raw", "ascend-nms")
REFERENCE_BACKEND = "torch"
STAGES_FILE = "stages.json"
ENV_CHECKPOINT = "FSAF_CHECKPOINT"
ENV_COCO_ROOT = "FSAF_COCO_ROOT"


def _canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _read_json(path):
    with open(path) as handle:
        return json.load(handle)


# ----------------------------------------------------------------------------------------------
# Stage book: declarations, keys, reuse, outputs
#
# A stage declares what it reads (Stage); its key is derived from that declaration alone (stage_key),
# and its body sees the spec only through the sections it declared (StageContext.spec), while a
# recorder on the spec loader refuses a body that read any other section. So a stage's key cannot
# drift from what the stage reads: a new read must be declared, and a declared read is keyed.

# Implementation version of each stage (by the part of its name before ':'). Bump a stage's number
# when a change to its body, or to the code it calls, changes what it writes: its key changes, so it
# and the stages after it run again. The package version is keyed beside it.
STAGE_VERSIONS = {"checkpoint": 1, "dataset": 1, "export": 1, "convert": 1, "data": 1, "infer": 1,
                  "results": 1, "evaluate": 1, "perf": 1, "parity": 1, "report": 1}


class Stage(object):
    """One stage's declaration: everything its outputs depend on, and the body that writes them.

    params: JSON values the body uses (ctx.params). inputs: label -> file path, or label -> {name: path}
    for a set of files (ctx.inputs); keyed by content. spec: names of the recipe spec sections the body
    reads (ctx.spec holds exactly these). upstream: earlier stages of this run whose records the body
    consumes beyond its input files (an image set, a model file); keyed by their keys. options: values
    for the body that do not change its outputs (a progress display, leave to unpickle a checkpoint);
    not keyed. `body(ctx)` returns (result dict, list of output paths).
    """

    def __init__(self, name, body, params=None, inputs=None, spec=(), upstream=(), options=None):
        self.name = name
        self.body = body
        self.params = dict(params or {})
        self.inputs = dict(inputs or {})
        self.spec = tuple(spec)
        self.upstream = tuple(u for u in upstream if u)
        self.options = dict(options or {})
        base = name.partition(":")[0]
        if base not in STAGE_VERSIONS:
            raise FsafReproError("reproduce stage {} has no implementation version in STAGE_VERSIONS".format(name))
        self.version = STAGE_VERSIONS[base]


class StageContext(object):
    """What a stage body is given: its declared params, inputs and spec sections, and its options."""

    def __init__(self, stage, recipe):
        self.params = dict(stage.params)
        self.inputs = dict(stage.inputs)
        self.spec = dict((section, recipe[section]) for section in stage.spec)
        self.options = dict(stage.options)


def _digest_text(obj):
    return hashlib.sha256(_canonical(obj).encode("utf-8")).hexdigest()


def stage_key(stage, recipe, upstream_keys, digest=file_sha256):
    """(key, fields) of a declared stage: the sha256 of its declaration, with each input file by the
    sha256 of its content, each spec section by the sha256 of its value in `recipe`, each upstream
    stage by its key in `upstream_keys`. Nothing outside the declaration goes in."""
    inputs = {}
    for label, value in sorted(stage.inputs.items()):
        if value is None:
            inputs[label] = None
        elif isinstance(value, dict):
            inputs[label] = _digest_text(dict((name, _input_digest(stage, label, path, digest))
                                              for name, path in value.items()))
        else:
            inputs[label] = _input_digest(stage, label, value, digest)
    sections = {}
    for section in stage.spec:
        if section not in recipe:
            raise FsafReproError("reproduce stage {} declares the spec section {!r}, which the recipe spec "
                                 "(fsaf_repro/spec/recipe.json) does not have".format(stage.name, section))
        sections[section] = section_digest(recipe[section])
    upstream = {}
    for name in stage.upstream:
        if name not in upstream_keys:
            raise FsafReproError("reproduce stage {} consumes stage {}, which has not run in this run".format(
                stage.name, name))
        upstream[name] = upstream_keys[name]
    fields = {"params": stage.params, "inputs": inputs, "spec": sections, "upstream": upstream,
              "implementation": {"stage": stage.version, "package": __version__}}
    return _digest_text(fields), fields


def _input_digest(stage, label, path, digest):
    try:
        return digest(path)
    except OSError as exc:
        raise DataError("{}: cannot be read ({}); it is input '{}' of the reproduce stage {}".format(
            path, exc.strerror or exc, label, stage.name)) from None


def _changed_parts(old, new):
    """Which declared reads differ between two stage records' fields, for the log."""
    if not isinstance(old, dict) or set(old) != set(new):
        return ["stage record of another layout"]
    parts = []
    for kind in ("params", "inputs", "spec", "upstream"):
        before, after = old.get(kind) or {}, new[kind]
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                parts.append("{} {}".format({"inputs": "input", "params": "param", "spec": "spec section"}.get(
                    kind, kind), name))
    if old.get("implementation") != new["implementation"]:
        parts.append("implementation version")
    return parts


def _under_spec_sections(stage_name, sections, make):
    """`make()`, refused when it read a spec section outside `sections`: for a value that is built
    beside a stage and consumed by the stages after it (which key the stage, not the value)."""
    from .spec import recording_section_reads
    with recording_section_reads() as read:
        value = make()
    undeclared = sorted(read - set(sections))
    if undeclared:
        raise FsafReproError(_UNDECLARED.format(stage_name, ", ".join(undeclared)))
    return value


_UNDECLARED = ("reproduce stage {} read the spec section(s) {} without declaring them, so its key does not "
               "cover them (fsaf_repro/reproduce.py: add them to the stage's spec sections)")


class _Digests(object):
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


class StageBook(object):
    """`<run dir>/stages.json`: for each finished stage its key, the fields hashed into it, its
    result record and the sha256 of each output file (paths relative to the run directory).

    `recipe` is the spec the keys are derived from (default: the loaded one, see fsaf_repro.spec)."""

    def __init__(self, run_dir, log, recipe=None):
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
                self.entries = _read_json(self.path).get("stages", {})
            except (ValueError, AttributeError) as exc:
                # It is written atomically, so only outside damage gets here. Keep the damaged file
                # for inspection rather than overwrite it with the first stage's record.
                kept = "{}.unreadable-{}".format(self.path, time.strftime("%Y%m%dT%H%M%S"))
                base, number = kept, 1
                while os.path.exists(kept):  # damaged twice within a second: keep both
                    kept = "{}-{}".format(base, number)
                    number += 1
                try:
                    os.replace(self.path, kept)
                except OSError as rename_error:
                    raise FsafReproError("{} is unreadable ({}) and could not be moved aside to {} ({}); move or "
                                         "remove it to run every stage again".format(
                                             self.path, exc, kept, rename_error.strerror or rename_error))
                log("{} is unreadable ({}), kept as {}: every stage runs again (inference resumes from "
                    "its own journal where its arguments match)".format(self.path, exc, kept))
                self.entries = {}

    def _save(self):
        atomic_write_json(self.path, {"format": 2, "stages": self.entries})

    def _intact(self, entry):
        for rel, digest in entry.get("outputs", {}).items():
            path = os.path.join(self.run_dir, rel)
            if not os.path.isfile(path) or self.digest(path) != digest:
                return False
        return True

    def run(self, stage):
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
            self.log("reused: {} (key {})".format(name, key[:12]))
            return entry["result"]
        if entry is not None:
            if entry.get("key") != key:
                why = "changed: {}".format(", ".join(_changed_parts(entry.get("fields"), fields)) or "key")
            else:
                why = "an output is missing or was modified"
            self.log("re-running: {} ({})".format(name, why))
            # forget the old record first: a failure now must not leave a stale 'finished' stage
            del self.entries[name]
            self._save()
        started = time.time()
        with recording_section_reads() as read:
            result, outputs = stage.body(StageContext(stage, self.recipe))
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
        self.log("ran: {} (key {}, {:.1f} s)".format(name, key[:12], seconds))
        return result

    def key(self, name):
        entry = self.entries.get(name)
        return entry["key"] if entry else None

    def seconds(self, name):
        entry = self.entries.get(name)
        return entry.get("seconds") if entry else None


class RunLog(object):
    """Prints each line and appends it to `<run dir>/logs/reproduce.log`."""

    def __init__(self, run_dir, echo=True):
        self.path = os.path.join(run_dir, "logs", "reproduce.log")
        if not os.path.isdir(os.path.dirname(self.path)):
            os.makedirs(os.path.dirname(self.path))
        self.echo = echo
        self.lines = []

    def __call__(self, message):
        self.lines.append(message)
        if self.echo:
            sys.stdout.write("reproduce: {}\n".format(message))
            sys.stdout.flush()
        with open(self.path, "a") as handle:
            handle.write("{} {}\n".format(datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z",
                                          message))


# ----------------------------------------------------------------------------------------------
# Inputs


def resolve_inputs(checkpoint=None, coco_root=None, environ=None):
    """(checkpoint path or None, coco root or None), from the arguments or the environment.

    A path given (argument or variable) must exist: a missing one is an error naming it.
    """
    environ = os.environ if environ is None else environ
    if not checkpoint:
        checkpoint = environ.get(ENV_CHECKPOINT) or None
    if not coco_root:
        coco_root = environ.get(ENV_COCO_ROOT) or None
    if checkpoint is not None:
        checkpoint = os.path.abspath(os.path.expanduser(str(checkpoint)))
        if not os.path.isfile(checkpoint):
            raise CheckpointError("checkpoint not found: {} (given by --checkpoint or {}); pass the official "
                                  "fsaf_r50_fpn_1x_coco-94ccc51f.pth, or give no checkpoint to run on seeded "
                                  "weights".format(checkpoint, ENV_CHECKPOINT))
    if coco_root is not None:
        coco_root = os.path.abspath(os.path.expanduser(str(coco_root)))
        if not os.path.isdir(coco_root):
            raise DataError("COCO root not found: {} (given by --coco-root or {}); it must hold val2017/ and "
                            "annotations/instances_val2017.json".format(coco_root, ENV_COCO_ROOT))
        for rel in (os.path.join("annotations", "instances_val2017.json"), "val2017"):
            if not os.path.exists(os.path.join(coco_root, rel)):
                raise DataError("COCO root {} has no {} (expected <root>/val2017/*.jpg and "
                                "<root>/annotations/instances_val2017.json)".format(coco_root, rel))
    return checkpoint, coco_root


def _load_extra_perf(paths):
    """Perf records given by --extra-perf (measured elsewhere), each marked with the file it came from."""
    from .perf import load_records
    records = []
    for path in paths or ():
        loaded = load_records(path)
        for record in loaded:
            record["source"] = record.get("source", "") + " (from {})".format(path)
        records.extend(loaded)
    return records


def parse_list(text, what):
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        return list(text)
    items = [part.strip() for part in str(text).split(",") if part.strip()]
    if not items:
        raise FsafReproError("{} is empty".format(what))
    return items


def parse_sizes(text):
    items = parse_list(text, "--batch-sizes")
    if items is None:
        return None
    try:
        sizes = [int(item) for item in items]
    except ValueError:
        raise FsafReproError("--batch-sizes must be comma-separated integers, got {!r}".format(text)) from None
    if any(size < 1 for size in sizes):
        raise FsafReproError("--batch-sizes must be positive, got {!r}".format(text))
    return sorted(set(sizes))


def default_threads(cpu_count=None):
    """Intra-op threads of the CPU runtimes: all cores but one, which the image loader needs.

    With as many runtime threads as cores, the loader's threads (or any other process) preempt a
    runtime thread and its parallel loops wait at every barrier: on a busy 2-core host torch eager
    then runs several times slower than on one thread.
    """
    count = cpu_count or os.cpu_count() or 1
    return max(1, int(count) - 1)


def device_label(backend, soc_version=None):
    """The perf records' device label of a backend's measurements on this host."""
    if backend in OM_BACKENDS or backend == "onnxruntime-cann":
        soc = (soc_version or "npu").replace("Ascend", "")
        if soc.startswith("310P"):
            return "310P"
        if soc.startswith("310"):
            return "310"
        return soc
    if backend in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
        return "gpu"
    return "cpu"


def backend_precision(backend, om_precision="force_fp16"):
    if backend in OM_BACKENDS:
        return "fp16" if om_precision == "force_fp16" else om_precision
    return "fp32"


# ----------------------------------------------------------------------------------------------
# Stage bodies


def _export_check(path, sidecar, flavour):
    """Re-read an exported file: its inputs/outputs are the documented ones and its NMS node is there.

    (export_onnx has already run onnx.checker on the standard flavours before moving the file in place.)
    """
    import onnx

    model = onnx.load(path)

    def dims(value):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]

    graph_inputs = [{"name": v.name, "shape": dims(v)} for v in model.graph.input]
    graph_outputs = [{"name": v.name, "shape": dims(v)} for v in model.graph.output]
    documented = [o["name"] for o in sidecar["outputs"]]
    if [o["name"] for o in graph_outputs] != documented:
        raise FsafReproError("{}: outputs {} differ from the documented {}".format(
            path, [o["name"] for o in graph_outputs], documented))
    for out, doc in zip(graph_outputs, sidecar["outputs"]):
        if out["shape"] != doc["shape"]:
            raise FsafReproError("{}: output {} has shape {}, documented {}".format(
                path, out["name"], out["shape"], doc["shape"]))
    ops = sorted(set(node.op_type for node in model.graph.node))
    wanted = {"onnx-nms": "NonMaxSuppression", "ascend-nms": "BatchMultiClassNMS"}.get(flavour)
    if wanted and wanted not in ops:
        raise FsafReproError("{}: the {} graph lacks its {} node".format(path, flavour, wanted))
    if not wanted and set(ops) & {"NonMaxSuppression", "BatchMultiClassNMS"}:
        raise FsafReproError("{}: the raw graph contains an NMS node".format(path))
    return {"flavour": flavour, "inputs": graph_inputs, "outputs": graph_outputs, "ops": len(ops),
            "nms_node": [op for op in ops if op in ("NonMaxSuppression", "BatchMultiClassNMS")],
            "checker": "onnx.checker passed (at export)" if flavour != "ascend-nms"
            else "onnx.checker not applicable (custom BatchMultiClassNMS node); structure checked",
            "opset": sidecar.get("opset"), "onnx_version": onnx.__version__}


def _load_backend(name, model_path, trusted=False, threads=None):
    from .backends import create_backend
    options = {"trusted": trusted} if name == REFERENCE_BACKEND and trusted else {}
    if threads and (name == REFERENCE_BACKEND or name in ONNX_BACKENDS):
        options["threads"] = int(threads)
    backend = create_backend(name, **options)
    backend.load(model_path)
    return backend, options


def run_padded(backend, batch):
    """Outputs of `batch` through a backend, split or zero-padded to a static batch size if it has one."""
    import numpy as np
    static = backend.batch_size
    if static is None or static == batch.shape[0]:
        return backend.run(batch)
    dets, labels = [], []
    for start in range(0, batch.shape[0], static):
        part = batch[start:start + static]
        count = part.shape[0]
        if count < static:
            part = np.concatenate([part, np.zeros((static - count,) + part.shape[1:], part.dtype)])
        out = backend.run(part)
        dets.append(out["dets"][:count])
        labels.append(out["labels"][:count])
    return {"dets": np.concatenate(dets), "labels": np.concatenate(labels)}


# ----------------------------------------------------------------------------------------------
# The run


def default_run_dir(embedded, checkpoint, coco_root):
    if embedded:
        return os.path.join("runs", "embedded-default")
    parts = [os.path.splitext(os.path.basename(checkpoint))[0] if checkpoint else "seeded",
             os.path.basename(coco_root.rstrip(os.sep)) if coco_root else "generated"]
    return os.path.join("runs", "_".join(parts))


def run_reproduce(*args, **kwargs):
    """Run the pipeline; returns a summary dict (run_dir, report path, stage statuses, skips, metrics).

    Arguments left None take the embedded default (no checkpoint, no COCO root) or the recipe's values:
    see `_run_reproduce`. torch's thread count (process-wide, set by a `threads` option) is restored.
    """
    import torch
    call = inspect.signature(_run_reproduce).bind(*args, **kwargs)
    call.apply_defaults()
    given = call.arguments
    checkpoint, coco_root = resolve_inputs(given["checkpoint"], given["coco_root"], given["environ"])
    given["run_dir"] = os.path.abspath(given["run_dir"] or default_run_dir(
        checkpoint is None and coco_root is None, checkpoint, coco_root))
    # one writer per run directory: a second run on it refuses at once (fsaf_repro.locking)
    with run_lock(given["run_dir"], "reproduce"):
        torch_threads = torch.get_num_threads()
        try:
            return _run_reproduce(*call.args, **call.kwargs)
        finally:
            set_intra_op_threads(torch_threads)


def _run_reproduce(run_dir=None, checkpoint=None, coco_root=None, backends=None, batch_sizes=None,
                  infer_batch_size=None, height=None, width=None, num_images=None, limit=None,
                  score_threshold=None, scorer="pycocotools", perf_loops=None, perf_warmup=None,
                  parity_images=None, seed=EMBEDDED_SEED, soc_version=None, precision_mode="force_fp16",
                  extra_perf=(), threads=None, perf_threads=None, trusted=False, progress=False, echo=True,
                  environ=None):
    """The pipeline (see `run_reproduce` and the module docstring)."""
    from .spec import input_constants, model_constants, performance_reference

    wall_start = time.time()
    checkpoint, coco_root = resolve_inputs(checkpoint, coco_root, environ)
    # Inputs that are read only late in the run are checked now, before minutes of export and
    # inference: the COCO annotation file, and the extra perf records that only the report uses.
    if coco_root is not None:
        from .data import read_annotation_file
        read_annotation_file(os.path.join(coco_root, "annotations", "instances_val2017.json"))
    extra_records = _load_extra_perf(extra_perf)
    seeded = checkpoint is None
    generated = coco_root is None
    embedded = seeded and generated
    if embedded:
        default_hw = EMBEDDED_INPUT_HW
    else:
        default_hw = (input_constants()["height"], input_constants()["width"])
    height = int(height or default_hw[0])
    width = int(width or default_hw[1])
    requested_backends = parse_list(backends, "--backends")
    # Backends run over the data set. torch is also the parity reference: left out of --backends it still
    # runs the parity batch (a few images), not the data set (hours on a CPU at the recipe's size).
    backend_names = requested_backends or list(DEFAULT_BACKENDS)
    sizes = parse_sizes(batch_sizes)
    if sizes is None:
        if embedded:
            sizes = list(EMBEDDED_BATCH_SIZES)
        elif any(b in OM_BACKENDS or b == "onnxruntime-cann" for b in backend_names) and _npu_present(backend_names):
            sizes = list(performance_reference()["batch_sizes"])
        else:
            sizes = list(DEFAULT_CPU_BATCH_SIZES)
    infer_bs = int(infer_batch_size or sizes[0])
    if score_threshold is None:
        score_threshold = model_constants()["score_threshold"]
    score_threshold = float(score_threshold)
    threads = default_threads() if threads is None else (int(threads) or None)
    # pure-inference timing has no loader beside it: the whole host, as the recipe's tools use the device
    perf_threads = (os.cpu_count() or 1) if perf_threads is None else (int(perf_threads) or None)
    if threads:
        set_intra_op_threads(threads)  # also for the export traces
    perf_loops = int(perf_loops or DEFAULT_PERF_LOOPS)
    perf_warmup = int(DEFAULT_PERF_WARMUP if perf_warmup is None else perf_warmup)
    parity_images = int(parity_images or DEFAULT_PARITY_IMAGES)
    num_images = int(num_images or EMBEDDED_NUM_IMAGES)

    from .backends import backend_availability, get_backend_class
    for name in backend_names:
        get_backend_class(name)  # an unknown name is an error (naming the known ones), before any work

    run_dir = os.path.abspath(run_dir or default_run_dir(embedded, checkpoint, coco_root))
    if not os.path.isdir(run_dir):
        os.makedirs(run_dir)
    log = RunLog(run_dir, echo=echo)
    log("run directory {} (fsaf-repro {}, python {})".format(run_dir, __version__, sys.version.split()[0]))
    book = StageBook(run_dir, log)
    skipped = {}

    # 1. checkpoint -----------------------------------------------------------------------------
    if seeded:
        ckpt_path = os.path.join(run_dir, "inputs", "fsaf_seeded_{}.pth".format(seed))

        def make_checkpoint(ctx):
            from .checkpoint import write_seeded_checkpoint
            write_seeded_checkpoint(ckpt_path, ctx.params["seed"])
            return {"path": ckpt_path, "seeded": True, "seed": ctx.params["seed"]}, [ckpt_path]

        book.run(Stage("checkpoint", make_checkpoint, params={"seed": seed},
                       spec=("model", "input", "coco_classes")))
    else:
        ckpt_path = checkpoint
    # seeded weights were written by this run: loading them needs no unpickling caution
    trusted = bool(trusted or seeded)
    # the stage that wrote the checkpoint, if this run did: a consumer of the file also consumes it
    ckpt_stage = "checkpoint" if seeded else None
    ckpt_sha = book.digest(ckpt_path)
    log("checkpoint {} (sha256 {}{})".format(ckpt_path, ckpt_sha[:16], ", seeded weights" if seeded else ""))

    # 2. data set -------------------------------------------------------------------------------
    if generated:
        data_root = os.path.join(run_dir, "inputs", "coco")

        def make_dataset(ctx):
            from .synthetic import make_synthetic_coco
            ann, img_dir = make_synthetic_coco(data_root, num_images=ctx.params["num_images"],
                                               seed=ctx.params["seed"])
            files = [os.path.join(img_dir, name) for name in sorted(os.listdir(img_dir))]
            return {"annotation_file": ann, "image_dir": img_dir, "generated": True}, [ann] + files

        book.run(Stage("dataset", make_dataset, params={"num_images": num_images, "seed": seed},
                       spec=("coco_classes", "coco_category_ids")))
        annotation_file = os.path.join(data_root, "annotations", "instances_val2017.json")
        image_dir = os.path.join(data_root, "val2017")
    else:
        annotation_file = os.path.join(coco_root, "annotations", "instances_val2017.json")
        image_dir = os.path.join(coco_root, "val2017")

    # 3. export ---------------------------------------------------------------------------------
    onnx_dir = os.path.join(run_dir, "onnx")
    onnx_paths = dict((f, os.path.join(onnx_dir, "fsaf_{}.onnx".format(f))) for f in FLAVOURS)

    def do_export(ctx):
        from .export import export_onnx
        checks = {}
        outputs = []
        canvas_h, canvas_w = ctx.params["canvas"]
        for flavour in ctx.params["flavours"]:
            path = onnx_paths[flavour]
            sidecar = export_onnx(ctx.inputs["checkpoint"], path, flavour=flavour, height=canvas_h, width=canvas_w,
                                  batch_size=None, opset=ctx.spec["model"]["opset"],
                                  trusted=ctx.options["trusted"])
            checks[flavour] = _export_check(path, sidecar, flavour)
            checks[flavour]["file"] = os.path.relpath(path, run_dir)
            checks[flavour]["export_seconds"] = sidecar["export_seconds"]
            log("exported {} ({} flavour, {}x{}, dynamic batch): checked".format(
                os.path.relpath(path, run_dir), flavour, canvas_h, canvas_w))
            outputs.extend([path, path + ".json"])
        return {"flavours": checks}, outputs

    export_result = book.run(Stage("export", do_export, params={"canvas": [height, width], "flavours": list(FLAVOURS),
                                                                "batch": "dynamic"},
                                   inputs={"checkpoint": ckpt_path}, spec=("model", "input"), upstream=(ckpt_stage,),
                                   options={"trusted": trusted}))

    # 4. convert (atc) --------------------------------------------------------------------------
    om_paths = {}
    convert_result = None
    atc = shutil.which("atc")
    if atc is None:
        skipped["convert"] = ("atc is not on PATH: install the CANN toolkit and `source "
                              "/usr/local/Ascend/ascend-toolkit/set_env.sh` to build the .om files")
        log("skipped: convert ({})".format(skipped["convert"]))
    else:
        om_dir = os.path.join(run_dir, "om")
        soc = soc_version
        if soc is None:
            from .convert import detect_soc_version
            try:
                soc = detect_soc_version(log_path=os.path.join(run_dir, "logs", "npu-smi.log"))
            except ToolError as exc:
                skipped["convert"] = "atc is on PATH but the soc version is unknown: {}".format(exc)
                log("skipped: convert ({})".format(skipped["convert"]))
        # one static om per throughput batch size, and one for the data set inference
        om_sizes = sorted(set(sizes) | {infer_bs})
        if soc is not None:
            def do_convert(ctx):
                from .convert import convert_batch_sizes
                canvas_h, canvas_w = ctx.params["canvas"]
                built = convert_batch_sizes(ctx.inputs["onnx"], om_dir, ctx.params["batch_sizes"],
                                            soc_version=ctx.params["soc_version"],
                                            precision_mode=ctx.params["precision_mode"], height=canvas_h,
                                            width=canvas_w)
                outputs, oms = [], {}
                for bs, sidecar in sorted(built.items()):
                    om = os.path.join(om_dir, sidecar["om"])
                    oms[str(bs)] = os.path.relpath(om, run_dir)
                    outputs.extend([om, om + ".json", os.path.join(om_dir, sidecar["log"])])
                return {"soc_version": ctx.params["soc_version"], "oms": oms}, outputs

            # atc reads the ONNX sidecar too (input name and shape)
            convert_result = book.run(Stage(
                "convert", do_convert, params={"batch_sizes": om_sizes, "soc_version": soc,
                                               "precision_mode": precision_mode, "atc": atc,
                                               "canvas": [height, width]},
                inputs={"onnx": onnx_paths["ascend-nms"], "onnx_sidecar": onnx_paths["ascend-nms"] + ".json"},
                upstream=("export",)))
            om_paths = dict((int(bs), os.path.join(run_dir, rel)) for bs, rel in convert_result["oms"].items())
            soc_version = soc

    # 5. data -----------------------------------------------------------------------------------
    from .data import CocoImageSet
    # The image set (ids, sizes, label -> category id by the spec's class names) is what the later
    # stages consume of the data stage: it is built under the data stage's spec sections.
    data_spec = ("coco_classes", "coco_category_ids", "input")
    image_set = _under_spec_sections("data", data_spec, lambda: CocoImageSet(
        annotation_file, image_dir, limit=limit, height=height, width=width))
    data_path = os.path.join(run_dir, "data_manifest.json")

    def do_data(ctx):
        record = {"annotation_file": annotation_file, "annotation_sha256": image_set.annotation_sha256,
                  "image_dir": image_dir, "num_images": len(image_set), "total_images": image_set.total_images,
                  "canvas": ctx.params["canvas"], "generated": generated,
                  "images": [{"image_id": m.image_id, "file_name": m.file_name, "orig_w": m.orig_w,
                              "orig_h": m.orig_h, "scale": m.scale} for m in image_set.metas]}
        atomic_write_json(data_path, record)
        return {"num_images": len(image_set), "annotation_sha256": image_set.annotation_sha256}, [data_path]

    # Generated images are keyed by their content (the dataset stage's outputs), not by where the run
    # directory is, so a copied or moved run directory is still reused.
    image_dir_key = "<generated>" if generated else image_dir
    book.run(Stage("data", do_data, params={"image_dir": image_dir_key, "limit": limit, "canvas": [height, width]},
                   inputs={"annotation": annotation_file}, spec=data_spec,
                   upstream=("dataset" if generated else None,)))
    image_ids_sha = hashlib.sha256(_canonical(image_set.image_ids).encode("utf-8")).hexdigest()
    # what a stage that decodes images reads of them: their bytes, by file name (not by folder)
    image_files = dict((m.file_name, m.path) for m in image_set.metas)
    log("data: {} images ({}), annotations sha256 {}".format(
        len(image_set), "generated" if generated else annotation_file, image_set.annotation_sha256[:16]))

    # backends: availability and models ---------------------------------------------------------
    runnable = []
    models = {}
    for name in backend_names:
        avail = backend_availability(name)
        if not avail.ok:
            skipped[name] = "unavailable: {}".format(avail.reason)
        elif name in OM_BACKENDS:
            if infer_bs not in om_paths:
                skipped[name] = "needs an om for batch size {}: {}".format(
                    infer_bs, "convert was skipped ({})".format(skipped["convert"]) if "convert" in skipped
                    else "not built")
            else:
                models[name] = om_paths[infer_bs]
                runnable.append(name)
        elif name in ONNX_BACKENDS:
            models[name] = onnx_paths["onnx-nms"]
            runnable.append(name)
        elif name == "torch":
            models[name] = ckpt_path
            runnable.append(name)
        elif name == "null":
            models[name] = None
            runnable.append(name)
        else:
            skipped[name] = "not driven by reproduce"
        if name in skipped:
            log("skipped: backend {} ({})".format(name, skipped[name]))

    def model_stage(name):
        """The stage of this run that wrote backend `name`'s model file, if any."""
        if name in OM_BACKENDS:
            return "convert"
        if name in ONNX_BACKENDS:
            return "export"
        return ckpt_stage if name == REFERENCE_BACKEND else None

    # 6. inference, score threshold, evaluation per backend --------------------------------------
    metrics = {}
    results_paths = {}
    dataset_perf = []
    for name in runnable:
        infer_path = os.path.join(run_dir, "infer", "{}_bs{}.json".format(name, infer_bs))

        def do_infer(ctx, name=name, infer_path=infer_path):
            from .runner import infer_dataset
            if not os.path.isdir(os.path.dirname(infer_path)):
                os.makedirs(os.path.dirname(infer_path))
            params = ctx.params
            backend, options = _load_backend(params["backend"], ctx.inputs["model"], ctx.options["trusted"],
                                             params["threads"])
            kwargs = dict(batch_size=params["batch_size"], progress=ctx.options["progress"],
                          backend_name=params["backend"], backend_options=options, model_path=ctx.inputs["model"])
            try:
                try:
                    # a journal left by an interrupted run with these arguments is resumed
                    summary = infer_dataset(image_set, backend, infer_path, **kwargs)
                except JournalMismatch as exc:
                    # Only a journal of other arguments is discarded; a damaged journal of these
                    # arguments is an error the user sees (its finished batches are not thrown away).
                    log("infer:{}: discarding the journal of an interrupted run with other arguments ({})".format(
                        name, exc))
                    summary = infer_dataset(image_set, backend, infer_path, restart=True, **kwargs)
            finally:
                backend.close()
            records = []
            for record in summary["records"]:
                record = dict(record)
                record["device"] = params["device"]
                record["precision"] = params["precision"]
                record["source"] = "measured: fsaf-repro reproduce, {} images at {}x{}".format(
                    summary["images"], *params["canvas"])
                records.append(record)
            return {"detections": summary["detections"], "images": summary["images"],
                    "wall_seconds": summary["wall_seconds"], "records": records}, [infer_path]

        # the image set comes from the data stage; the images are keyed by their bytes
        infer_result = book.run(Stage(
            "infer:{}".format(name), do_infer,
            params={"backend": name, "image_ids_sha256": image_ids_sha, "canvas": [height, width],
                    "batch_size": infer_bs, "threads": threads, "device": device_label(name, soc_version),
                    "precision": backend_precision(name, precision_mode)},
            inputs={"model": models[name], "images": image_files},
            spec=("model", "input", "coco_classes", "coco_category_ids"),
            upstream=("data", model_stage(name)), options={"trusted": trusted, "progress": progress}))
        dataset_perf.extend(infer_result["records"])

        results_path = os.path.join(run_dir, "results_{}.json".format(name))

        def do_threshold(ctx, results_path=results_path):
            from .postprocess import read_results_json, write_results_json
            threshold = ctx.params["score_threshold"]
            results = [r for r in read_results_json(ctx.inputs["infer"]) if r["score"] >= threshold]
            write_results_json(results_path, results)
            return {"detections": len(results)}, [results_path]

        book.run(Stage("results:{}".format(name), do_threshold, params={"score_threshold": score_threshold},
                       inputs={"infer": infer_path}, upstream=("infer:{}".format(name),)))
        results_paths[name] = results_path

        metrics_path = os.path.join(run_dir, "metrics_{}.json".format(name))

        def do_evaluate(ctx, metrics_path=metrics_path):
            from .evaluate import evaluate_results, metrics_record
            record = metrics_record(evaluate_results(ctx.inputs["annotation"], ctx.inputs["results"],
                                                     scorer=ctx.params["scorer"], image_ids=image_set.image_ids))
            atomic_write_json(metrics_path, record)
            return {"ap": record["stats"][0]}, [metrics_path]

        book.run(Stage("evaluate:{}".format(name), do_evaluate,
                       params={"scorer": scorer, "image_ids_sha256": image_ids_sha},
                       inputs={"results": results_path, "annotation": annotation_file},
                       spec=("evaluation", "accuracy"), upstream=("results:{}".format(name), "data")))
        metrics[name] = _read_json(metrics_path)
        log("{}: AP@[.50:.95] = {:.3f} over {} images".format(name, metrics[name]["stats"][0],
                                                                metrics[name]["num_images"]))

    # 7. throughput per backend and batch size ---------------------------------------------------
    perf_records = list(dataset_perf)
    for name in runnable:
        if name == "null":
            continue
        perf_path = os.path.join(run_dir, "perf", "perf_{}.json".format(name))
        usable = [bs for bs in sizes if name not in OM_BACKENDS or bs in om_paths]

        def do_perf(ctx, perf_path=perf_path):
            from .perf import fixed_input, measure_pure_inference, write_records
            if not os.path.isdir(os.path.dirname(perf_path)):
                os.makedirs(os.path.dirname(perf_path))
            params = ctx.params
            name, perf_threads, (height, width) = params["backend"], params["threads"], params["canvas"]
            records = []
            for bs in params["batch_sizes"]:
                model = ctx.inputs["om_bs{}".format(bs)] if name in OM_BACKENDS else ctx.inputs["model"]
                backend, _ = _load_backend(name, model, ctx.options["trusted"], perf_threads)
                # the count that really ran: torch 1.8.0 may keep a lower one (torch_threads)
                ran_threads = getattr(backend, "intra_op_threads", None) or perf_threads
                try:
                    batch = fixed_input(bs, height, width)
                    record = measure_pure_inference(backend, batch, params["loops"], params["warmup"],
                                                    params["device"], params["precision"], name)
                finally:
                    backend.close()
                record["note"] = "input {}x{}{}{}".format(height, width, "" if (height, width) == (
                    ctx.spec["input"]["height"], ctx.spec["input"]["width"]) else " (reduced: not the recipe's "
                    "800x1216)", "; {} intra-op thread(s)".format(ran_threads) if perf_threads and
                    name not in OM_BACKENDS
                    else "")
                records.append(record)
                log("perf: {} bs{} {:.3f} fps (pure inference, {} loops)".format(name, bs, record["fps"],
                                                                                 params["loops"]))
            write_records(perf_path, records)
            return {"batch_sizes": params["batch_sizes"]}, [perf_path]

        if name in OM_BACKENDS:
            perf_models = dict(("om_bs{}".format(bs), om_paths[bs]) for bs in usable)
        else:
            perf_models = {"model": models[name]}
        book.run(Stage("perf:{}".format(name), do_perf,
                       params={"backend": name, "batch_sizes": usable, "loops": perf_loops, "warmup": perf_warmup,
                               "canvas": [height, width], "threads": perf_threads,
                               "device": device_label(name, soc_version),
                               "precision": backend_precision(name, precision_mode)},
                       inputs=perf_models, spec=("input", "model"), upstream=(model_stage(name),),
                       options={"trusted": trusted}))
        from .perf import load_records
        perf_records.extend(load_records(perf_path))
    from .perf import write_records
    perf_json = os.path.join(run_dir, "perf.json")
    write_records(perf_json, perf_records + extra_records)

    # 8. stage parity ---------------------------------------------------------------------------
    parity_path = os.path.join(run_dir, "parity.json")
    parity_count = min(parity_images, len(image_set))
    parity_sides = []  # (label, backend name, model path)
    if backend_availability(REFERENCE_BACKEND).ok:
        parity_sides.append(("torch", REFERENCE_BACKEND, ckpt_path))
    for name in runnable:
        if name in ONNX_BACKENDS:
            parity_sides.append(("{} (onnx-nms)".format(name), name, onnx_paths["onnx-nms"]))
    if "onnxruntime" in runnable:
        parity_sides.append(("onnxruntime (raw + host NMS)", "onnxruntime", onnx_paths["raw"]))
    for name in runnable:
        if name in OM_BACKENDS:
            parity_sides.append(("{} (om, ascend-nms)".format(name), name, models[name]))
            break
    if len(parity_sides) < 2 or parity_sides[0][1] != REFERENCE_BACKEND:
        skipped["parity"] = "needs the torch reference and at least one exported-model backend"
        log("skipped: parity ({})".format(skipped["parity"]))
        parity = None
    else:
        def do_parity(ctx):
            import numpy as np

            from .parity import compare_detections, within_tolerances
            batch = np.stack([image_set.load(i)[0] for i in range(len(ctx.params["image_ids"]))])
            outputs = {}
            for label, name in ctx.params["sides"]:
                backend, _ = _load_backend(name, ctx.inputs["model:" + label], ctx.options["trusted"],
                                           ctx.params["threads"])
                try:
                    outputs[label] = run_padded(backend, batch)
                finally:
                    backend.close()
            tol = ctx.spec["parity"]
            pairs = []
            labels = [side[0] for side in ctx.params["sides"]]
            wanted = [(labels[0], other) for other in labels[1:]]
            om_labels = [lb for lb in labels if "(om" in lb]
            onnx_label = "onnxruntime (onnx-nms)" if "onnxruntime (onnx-nms)" in labels else None
            if om_labels and onnx_label:
                wanted.append((onnx_label, om_labels[0]))
            for ref, other in wanted:
                record = compare_detections(outputs[ref]["dets"], outputs[ref]["labels"],
                                            outputs[other]["dets"], outputs[other]["labels"], tol["match_iou"])
                fp16 = "(om" in other
                if fp16:
                    ok = (record["match_rate"] >= tol["fp16_om_min_match_rate"]
                          and record["max_box_abs_diff"] <= tol["fp16_om_box_abs_tol_px"]
                          and record["max_score_abs_diff"] <= tol["fp16_om_score_abs_tol"])
                else:
                    ok = within_tolerances(record)
                record.update(reference=ref, other=other, within_tolerance=bool(ok),
                              tolerance="fp16 om" if fp16 else "fp32")
                pairs.append(record)
            payload = {"image_ids": ctx.params["image_ids"], "canvas": ctx.params["canvas"],
                       "tolerances": tol, "pairs": pairs}
            atomic_write_json(parity_path, payload)
            return {"pairs": len(pairs)}, [parity_path]

        parity_inputs = dict(("model:" + lb, m) for lb, _, m in parity_sides)
        parity_inputs["images"] = dict((m.file_name, m.path) for m in image_set.metas[:parity_count])
        book.run(Stage("parity", do_parity,
                       params={"sides": [[lb, n] for lb, n, _ in parity_sides],
                               "image_ids": image_set.image_ids[:parity_count], "canvas": [height, width],
                               "threads": threads},
                       inputs=parity_inputs, spec=("parity", "model", "input"),
                       upstream=("data",) + tuple(model_stage(n) for _, n, _ in parity_sides),
                       options={"trusted": trusted}))
        parity = _read_json(parity_path)
        # The mAP delta comes from the evaluation stages; it goes into the report's inputs, not into
        # parity.json (the parity stage's own output, which must stay as that stage wrote it).
        backend_of = dict((lb, n) for lb, n, _ in parity_sides)
        for pair in parity["pairs"]:
            ref_b, other_b = backend_of.get(pair["reference"]), backend_of.get(pair["other"])
            if "raw" in pair["other"] or ref_b not in metrics or other_b not in metrics:
                pair["map_delta"] = None
            else:
                pair["map_delta"] = metrics[other_b]["stats"][0] - metrics[ref_b]["stats"][0]

    # 9. report ---------------------------------------------------------------------------------
    from . import report as report_module
    context = {
        "run_dir": run_dir,
        "embedded": embedded, "seeded": seeded, "generated": generated,
        "checkpoint": {"path": ckpt_path, "sha256": ckpt_sha, "seeded": seeded},
        "dataset": {"annotation_file": annotation_file, "annotation_sha256": image_set.annotation_sha256,
                    "image_dir": image_dir, "num_images": len(image_set), "total_images": image_set.total_images,
                    "generated": generated},
        "canvas": [height, width], "batch_sizes": sizes, "infer_batch_size": infer_bs,
        "score_threshold": score_threshold, "scorer": scorer, "threads": threads, "perf_threads": perf_threads,
        "perf_loops": perf_loops,
        "perf_warmup": perf_warmup,
        "backends": [{"name": n, "status": "ran" if n in runnable else "skipped", "reason": skipped.get(n),
                      "model": os.path.relpath(models[n], run_dir) if models.get(n) and
                      models[n].startswith(run_dir) else models.get(n),
                      "device": device_label(n, soc_version), "precision": backend_precision(n, precision_mode)}
                     for n in backend_names],
        "skipped_steps": dict((k, v) for k, v in skipped.items() if k in ("convert", "parity")),
        "export": export_result, "convert": convert_result, "soc_version": soc_version,
        "metrics": metrics, "results": dict((n, os.path.relpath(p, run_dir)) for n, p in results_paths.items()),
        "perf_records": perf_records + extra_records, "parity": parity,
        "stages": [{"name": n, "key": book.key(n), "seconds": book.seconds(n)}
                   for n in sorted(book.entries, key=_stage_rank) if n != "report"],
    }
    context_path = os.path.join(run_dir, "report_inputs.json")
    atomic_write_json(context_path, context)

    def do_report(ctx):
        # the report is written from its declared input file, as a reused report was
        made = report_module.write_report(run_dir, _read_json(ctx.inputs["context"]), image_set=image_set)
        return made["record"], made["outputs"]

    report_inputs = {"context": context_path, "annotation": annotation_file}
    report_inputs.update(("results:" + n, p) for n, p in results_paths.items())
    report_inputs["images"] = dict((m.file_name, m.path) for m in image_set.metas[:report_module.DETECTION_IMAGES])
    # Every stage of this run feeds the report (its context lists their keys and records).
    report_result = book.run(Stage("report", do_report, params={"plots": report_module.plots_availability()[0]},
                                   inputs=report_inputs,
                                   spec=("accuracy", "performance", "coco_classes", "coco_category_ids", "input",
                                         "checkpoint"),
                                   upstream=tuple(sorted(book.keys, key=_stage_rank))))
    if report_result.get("plots_skipped"):
        log("plots skipped: {}".format(report_result["plots_skipped"]))
    report_path = os.path.join(run_dir, "report.md")
    wall = time.time() - wall_start
    stage_status = dict(book.status)
    reused = sorted(n for n, s in stage_status.items() if s == "reused")
    ran = sorted(n for n, s in stage_status.items() if s == "ran")
    log("done in {:.1f} s: {} stage(s) ran, {} reused; report {}".format(wall, len(ran), len(reused), report_path))
    summary = {"run_dir": run_dir, "report": report_path, "stages": stage_status, "skipped": skipped,
               "backends_run": runnable, "metrics": dict((n, m["stats"]) for n, m in metrics.items()),
               "wall_seconds": wall, "embedded": embedded, "perf": perf_json,
               "parity": parity_path if parity is not None else None}
    atomic_write_json(os.path.join(run_dir, "logs", "last_run.json"), summary)
    return summary


STAGE_ORDER = ("checkpoint", "dataset", "export", "convert", "data", "infer", "results", "evaluate", "perf",
               "parity", "report")


def _stage_rank(name):
    base, _, detail = name.partition(":")
    return (STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER), detail)


def _npu_present(backend_names):
    from .backends import backend_availability
    return any(backend_availability(b).ok for b in backend_names if b in OM_BACKENDS or b == "onnxruntime-cann")


# ----------------------------------------------------------------------------------------------
# Command line


def register_cli(subparsers):
    parser = subparsers.add_parser(
        "reproduce", help="run every step this host can run and write one run directory with report.md",
        description="With no argument: the embedded default (seeded weights in the official checkpoint layout, "
                    "a generated mini COCO set, reduced input size) - the whole pipeline in a minute or two. "
                    "With --checkpoint and --coco-root: the recipe's run on this host. Re-running with the same "
                    "arguments reuses finished stages.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", default=None, type=input_file("checkpoint"),
                        help="mmdetection checkpoint (default: ${}; absent: seeded weights)".format(ENV_CHECKPOINT))
    parser.add_argument("--coco-root", default=None, type=input_dir("COCO root"),
                        help="COCO root with val2017/ and annotations/instances_val2017.json (default: ${}; "
                             "absent: a generated set)".format(ENV_COCO_ROOT))
    parser.add_argument("--run-dir", default=None, type=output_dir("run directory"),
                        help="run directory (default: runs/embedded-default, or runs/<checkpoint>_<coco root>)")
    parser.add_argument("--backends", default=None,
                        help="comma-separated backends (default: the available ones among {})".format(
                            ", ".join(DEFAULT_BACKENDS)))
    parser.add_argument("--batch-sizes", default=None,
                        help="comma-separated batch sizes for conversion and throughput (default: {} for the "
                             "embedded default, {} on a CPU host, the recipe's 1..64 with an NPU)".format(
                                 ",".join(map(str, EMBEDDED_BATCH_SIZES)), ",".join(map(str, DEFAULT_CPU_BATCH_SIZES))))
    parser.add_argument("--infer-batch-size", type=int, default=None,
                        help="batch size of the dataset inference (default: the first batch size)")
    parser.add_argument("--height", type=int, default=None,
                        help="network input height (default 800; {} for the embedded default)".format(
                            EMBEDDED_INPUT_HW[0]))
    parser.add_argument("--width", type=int, default=None,
                        help="network input width (default 1216; {} for the embedded default)".format(
                            EMBEDDED_INPUT_HW[1]))
    parser.add_argument("--num-images", type=int, default=None,
                        help="generated images when no COCO root is given (default {})".format(EMBEDDED_NUM_IMAGES))
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N images by id (a labelled partial run, never the recipe's claim)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="drop detections scoring below this before evaluation (default: the model's 0.05)")
    parser.add_argument("--scorer", default="pycocotools", choices=("pycocotools", "faster-coco-eval"))
    parser.add_argument("--perf-loops", type=int, default=None,
                        help="timed pure-inference loops per batch size (default {})".format(DEFAULT_PERF_LOOPS))
    parser.add_argument("--perf-warmup", type=int, default=None,
                        help="untimed warm-up runs (default {})".format(DEFAULT_PERF_WARMUP))
    parser.add_argument("--parity-images", type=int, default=None,
                        help="images of the parity batch (default {})".format(DEFAULT_PARITY_IMAGES))
    parser.add_argument("--soc-version", default=None, help="atc --soc_version (default: from `npu-smi info`)")
    parser.add_argument("--precision-mode", default="force_fp16", help="atc --precision_mode")
    parser.add_argument("--extra-perf", action="append", default=[], metavar="PERF_JSON",
                        type=input_file("perf records file"),
                        help="perf records measured elsewhere (fsaf-repro perf --out), shown and gated beside "
                             "this host's; repeatable")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of the CPU backends (torch, ONNX Runtime) in the data set run and the "
                             "parity batch; default: all cores but one (the image loader's); 0: the runtimes' own")
    parser.add_argument("--perf-threads", type=int, default=None,
                        help="intra-op threads of the CPU backends in the pure-inference timing; default: all "
                             "cores; 0: the runtimes' own")
    parser.add_argument("--seed", type=int, default=EMBEDDED_SEED, help="seed of generated weights and data")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load the checkpoint with the full unpickler (only for files you trust)")
    parser.add_argument("--progress", action="store_true", help="progress bars during inference")
    parser.set_defaults(func=_cli_reproduce)


def _cli_reproduce(args):
    summary = run_reproduce(
        run_dir=args.run_dir, checkpoint=args.checkpoint, coco_root=args.coco_root, backends=args.backends,
        batch_sizes=args.batch_sizes, infer_batch_size=args.infer_batch_size, height=args.height,
        width=args.width, num_images=args.num_images, limit=args.limit, score_threshold=args.score_threshold,
        scorer=args.scorer, perf_loops=args.perf_loops, perf_warmup=args.perf_warmup,
        parity_images=args.parity_images, seed=args.seed, soc_version=args.soc_version,
        precision_mode=args.precision_mode, extra_perf=args.extra_perf, threads=args.threads,
        perf_threads=args.perf_threads,
        trusted=args.trust_checkpoint,
        progress=args.progress)
    print("report: {}".format(summary["report"]))
    return 0

