"""`fsaf-repro reproduce`: every step of the recipe this host can run, into one run directory.

checkpoint -> export ONNX (onnx-nms, raw, ascend-nms) -> [atc -> om] -> data -> inference per backend
(fsaf_repro.runner) -> score threshold -> evaluate -> throughput -> stage parity -> report.

Inputs: a checkpoint (--checkpoint / FSAF_CHECKPOINT) and a COCO root (--coco-root / FSAF_COCO_ROOT,
holding val2017/ and annotations/instances_val2017.json). What is not given is generated: seeded
weights written in the official checkpoint layout, and a synthetic COCO-format set. With neither
given this is the *embedded default*: a reduced input size and a few generated images, so that the
whole pipeline runs in a minute or two on a small CPU; its mAP means nothing about the recipe.

Every stage is keyed by a hash of its inputs (checkpoint sha256, export settings, annotation sha256,
backend, batch size, score threshold, ...) and recorded in `<run dir>/stages.json` with the sha256 of
its outputs. Run again with the same arguments, a stage whose key and outputs are unchanged is reused
(and says so); a changed input re-runs that stage, and the stages after it see new input hashes.
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
# Stage book: keys, reuse, outputs


class StageBook(object):
    """`<run dir>/stages.json`: for each finished stage its key, the fields hashed into it, its
    result record and the sha256 of each output file (paths relative to the run directory)."""

    def __init__(self, run_dir, log):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, STAGES_FILE)
        self.log = log
        self.entries = {}
        self.status = {}
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
        atomic_write_json(self.path, {"format": 1, "stages": self.entries})

    def _intact(self, entry):
        for rel, digest in entry.get("outputs", {}).items():
            path = os.path.join(self.run_dir, rel)
            if not os.path.isfile(path) or file_sha256(path) != digest:
                return False
        return True

    def run(self, name, fields, body):
        """Reuse stage `name` when its key and outputs are unchanged, else run `body()`.

        `body` returns (result dict, list of output paths); both are recorded. Returns the result.
        """
        key = hashlib.sha256(_canonical(fields).encode("utf-8")).hexdigest()
        entry = self.entries.get(name)
        if entry is not None and entry.get("key") == key and self._intact(entry):
            self.status[name] = "reused"
            self.log("reused: {} (key {})".format(name, key[:12]))
            return entry["result"]
        if entry is not None:
            why = "inputs changed" if entry.get("key") != key else "an output is missing or was modified"
            self.log("re-running: {} ({})".format(name, why))
            # forget the old record first: a failure now must not leave a stale 'finished' stage
            del self.entries[name]
            self._save()
        started = time.time()
        result, outputs = body()
        seconds = time.time() - started
        rels = {}
        for path in outputs:
            rel = os.path.relpath(os.path.abspath(path), self.run_dir)
            rels[rel.replace(os.sep, "/")] = file_sha256(path)
        self.entries[name] = {"key": key, "fields": fields, "result": result, "outputs": rels,
                              "seconds": round(seconds, 3)}
        self._save()
        self.status[name] = "ran"
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

        def make_checkpoint():
            from .checkpoint import write_seeded_checkpoint
            write_seeded_checkpoint(ckpt_path, seed)
            return {"path": ckpt_path, "seeded": True, "seed": seed}, [ckpt_path]

        book.run("checkpoint", {"seeded_weights": seed, "writer": "fsaf_repro.checkpoint.write_seeded_checkpoint",
                                "version": __version__}, make_checkpoint)
    else:
        ckpt_path = checkpoint
    # seeded weights were written by this run: loading them needs no unpickling caution
    trusted = bool(trusted or seeded)
    ckpt_sha = file_sha256(ckpt_path)
    log("checkpoint {} (sha256 {}{})".format(ckpt_path, ckpt_sha[:16], ", seeded weights" if seeded else ""))

    # 2. data set -------------------------------------------------------------------------------
    if generated:
        data_root = os.path.join(run_dir, "inputs", "coco")

        def make_dataset():
            from .synthetic import make_synthetic_coco
            ann, img_dir = make_synthetic_coco(data_root, num_images=num_images, seed=seed)
            files = [os.path.join(img_dir, name) for name in sorted(os.listdir(img_dir))]
            return {"annotation_file": ann, "image_dir": img_dir, "generated": True}, [ann] + files

        book.run("dataset", {"generated_images": num_images, "seed": seed, "version": __version__}, make_dataset)
        annotation_file = os.path.join(data_root, "annotations", "instances_val2017.json")
        image_dir = os.path.join(data_root, "val2017")
    else:
        annotation_file = os.path.join(coco_root, "annotations", "instances_val2017.json")
        image_dir = os.path.join(coco_root, "val2017")

    # 3. export ---------------------------------------------------------------------------------
    onnx_dir = os.path.join(run_dir, "onnx")
    onnx_paths = dict((f, os.path.join(onnx_dir, "fsaf_{}.onnx".format(f))) for f in FLAVOURS)

    def do_export():
        from .export import export_onnx
        checks = {}
        outputs = []
        for flavour in FLAVOURS:
            path = onnx_paths[flavour]
            sidecar = export_onnx(ckpt_path, path, flavour=flavour, height=height, width=width, batch_size=None,
                                  trusted=trusted)
            checks[flavour] = _export_check(path, sidecar, flavour)
            checks[flavour]["file"] = os.path.relpath(path, run_dir)
            checks[flavour]["export_seconds"] = sidecar["export_seconds"]
            log("exported {} ({} flavour, {}x{}, dynamic batch): checked".format(
                os.path.relpath(path, run_dir), flavour, height, width))
            outputs.extend([path, path + ".json"])
        return {"flavours": checks}, outputs

    export_result = book.run("export", {"checkpoint_sha256": ckpt_sha, "height": height, "width": width,
                                        "flavours": list(FLAVOURS), "batch": "dynamic",
                                        "opset": model_constants()["opset"], "version": __version__},
                             do_export)
    onnx_sha = dict((f, file_sha256(p)) for f, p in onnx_paths.items())

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
            def do_convert():
                from .convert import convert_batch_sizes
                built = convert_batch_sizes(onnx_paths["ascend-nms"], om_dir, om_sizes, soc_version=soc,
                                            precision_mode=precision_mode)
                outputs, oms = [], {}
                for bs, sidecar in sorted(built.items()):
                    om = os.path.join(om_dir, sidecar["om"])
                    oms[str(bs)] = os.path.relpath(om, run_dir)
                    outputs.extend([om, om + ".json", os.path.join(om_dir, sidecar["log"])])
                return {"soc_version": soc, "oms": oms}, outputs

            convert_result = book.run("convert", {"onnx_sha256": onnx_sha["ascend-nms"], "batch_sizes": om_sizes,
                                                  "soc_version": soc, "precision_mode": precision_mode,
                                                  "atc": atc}, do_convert)
            om_paths = dict((int(bs), os.path.join(run_dir, rel)) for bs, rel in convert_result["oms"].items())
            soc_version = soc

    # 5. data -----------------------------------------------------------------------------------
    from .data import CocoImageSet
    image_set = CocoImageSet(annotation_file, image_dir, limit=limit, height=height, width=width)
    data_path = os.path.join(run_dir, "data_manifest.json")

    def do_data():
        record = {"annotation_file": annotation_file, "annotation_sha256": image_set.annotation_sha256,
                  "image_dir": image_dir, "num_images": len(image_set), "total_images": image_set.total_images,
                  "canvas": [height, width], "generated": generated,
                  "images": [{"image_id": m.image_id, "file_name": m.file_name, "orig_w": m.orig_w,
                              "orig_h": m.orig_h, "scale": m.scale} for m in image_set.metas]}
        atomic_write_json(data_path, record)
        return {"num_images": len(image_set), "annotation_sha256": image_set.annotation_sha256}, [data_path]

    # Generated images are keyed by their content (the dataset stage's outputs), not by where the run
    # directory is, so a copied or moved run directory is still reused.
    image_dir_key = "<generated>" if generated else image_dir
    book.run("data", {"annotation_sha256": image_set.annotation_sha256, "image_dir": image_dir_key, "limit": limit,
                      "canvas": [height, width]}, do_data)
    image_ids_sha = hashlib.sha256(_canonical(image_set.image_ids).encode("utf-8")).hexdigest()
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
    model_sha = dict((n, file_sha256(p) if p else None) for n, p in models.items())

    # 6. inference, score threshold, evaluation per backend --------------------------------------
    metrics = {}
    results_paths = {}
    dataset_perf = []
    for name in runnable:
        infer_path = os.path.join(run_dir, "infer", "{}_bs{}.json".format(name, infer_bs))

        def do_infer(name=name, infer_path=infer_path):
            from .runner import infer_dataset
            if not os.path.isdir(os.path.dirname(infer_path)):
                os.makedirs(os.path.dirname(infer_path))
            backend, options = _load_backend(name, models[name], trusted, threads)
            kwargs = dict(batch_size=infer_bs, progress=progress, backend_name=name, backend_options=options,
                          model_path=models[name])
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
                record["device"] = device_label(name, soc_version)
                record["precision"] = backend_precision(name, precision_mode)
                record["source"] = "measured: fsaf-repro reproduce, {} images at {}x{}".format(
                    summary["images"], height, width)
                records.append(record)
            return {"detections": summary["detections"], "images": summary["images"],
                    "wall_seconds": summary["wall_seconds"], "records": records}, [infer_path]

        infer_result = book.run("infer:{}".format(name), {
            "backend": name, "model_sha256": model_sha[name], "annotation_sha256": image_set.annotation_sha256,
            "image_ids_sha256": image_ids_sha, "canvas": [height, width], "batch_size": infer_bs,
            "image_dir": image_dir_key, "threads": threads}, do_infer)
        dataset_perf.extend(infer_result["records"])

        results_path = os.path.join(run_dir, "results_{}.json".format(name))

        def do_threshold(infer_path=infer_path, results_path=results_path):
            from .postprocess import read_results_json, write_results_json
            results = [r for r in read_results_json(infer_path) if r["score"] >= score_threshold]
            write_results_json(results_path, results)
            return {"detections": len(results)}, [results_path]

        book.run("results:{}".format(name), {"infer_sha256": file_sha256(infer_path),
                                             "score_threshold": score_threshold}, do_threshold)
        results_paths[name] = results_path

        metrics_path = os.path.join(run_dir, "metrics_{}.json".format(name))

        def do_evaluate(results_path=results_path, metrics_path=metrics_path):
            from .evaluate import evaluate_results, metrics_record
            record = metrics_record(evaluate_results(annotation_file, results_path, scorer=scorer,
                                                     image_ids=image_set.image_ids))
            atomic_write_json(metrics_path, record)
            return {"ap": record["stats"][0]}, [metrics_path]

        book.run("evaluate:{}".format(name), {"results_sha256": file_sha256(results_path),
                                              "annotation_sha256": image_set.annotation_sha256,
                                              "image_ids_sha256": image_ids_sha, "scorer": scorer}, do_evaluate)
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

        def do_perf(name=name, perf_path=perf_path, usable=usable):
            from .perf import fixed_input, measure_pure_inference, write_records
            if not os.path.isdir(os.path.dirname(perf_path)):
                os.makedirs(os.path.dirname(perf_path))
            records = []
            for bs in usable:
                model = om_paths[bs] if name in OM_BACKENDS else models[name]
                backend, _ = _load_backend(name, model, trusted, perf_threads)
                # the count that really ran: torch 1.8.0 may keep a lower one (torch_threads)
                ran_threads = getattr(backend, "intra_op_threads", None) or perf_threads
                try:
                    batch = fixed_input(bs, height, width)
                    record = measure_pure_inference(backend, batch, perf_loops, perf_warmup,
                                                    device_label(name, soc_version),
                                                    backend_precision(name, precision_mode), name)
                finally:
                    backend.close()
                record["note"] = "input {}x{}{}{}".format(height, width, "" if (height, width) == (
                    input_constants()["height"], input_constants()["width"]) else " (reduced: not the recipe's "
                    "800x1216)", "; {} intra-op thread(s)".format(ran_threads) if perf_threads and
                    name not in OM_BACKENDS
                    else "")
                records.append(record)
                log("perf: {} bs{} {:.3f} fps (pure inference, {} loops)".format(name, bs, record["fps"],
                                                                                 perf_loops))
            write_records(perf_path, records)
            return {"batch_sizes": usable}, [perf_path]

        book.run("perf:{}".format(name), {"backend": name, "model_sha256": model_sha[name], "batch_sizes": usable,
                                          "oms": dict((str(bs), file_sha256(om_paths[bs])) for bs in usable
                                                      if name in OM_BACKENDS),
                                          "loops": perf_loops, "warmup": perf_warmup, "canvas": [height, width],
                                          "threads": perf_threads},
                 do_perf)
        from .perf import load_records
        perf_records.extend(load_records(perf_path))
    extra_records = []
    for path in extra_perf or ():
        from .perf import load_records
        loaded = load_records(path)
        for record in loaded:
            record["source"] = record.get("source", "") + " (from {})".format(path)
        extra_records.extend(loaded)
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
        def do_parity():
            import numpy as np

            from .parity import compare_detections, within_tolerances
            from .spec import parity_tolerances
            batch = np.stack([image_set.load(i)[0] for i in range(parity_count)])
            outputs = {}
            for label, name, model in parity_sides:
                backend, _ = _load_backend(name, model, trusted, threads)
                try:
                    outputs[label] = run_padded(backend, batch)
                finally:
                    backend.close()
            tol = parity_tolerances()
            pairs = []
            labels = [side[0] for side in parity_sides]
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
            payload = {"image_ids": image_set.image_ids[:parity_count], "canvas": [height, width],
                       "tolerances": tol, "pairs": pairs}
            atomic_write_json(parity_path, payload)
            return {"pairs": len(pairs)}, [parity_path]

        book.run("parity", {"sides": [[lb, n, file_sha256(m)] for lb, n, m in parity_sides],
                            "image_ids": image_set.image_ids[:parity_count], "canvas": [height, width],
                            "annotation_sha256": image_set.annotation_sha256}, do_parity)
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

    def do_report():
        made = report_module.write_report(run_dir, context, image_set=image_set)
        return made["record"], made["outputs"]

    report_result = book.run("report", {"context_sha256": file_sha256(context_path),
                                        "plots": report_module.plots_availability()[0],
                                        "version": __version__}, do_report)
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

