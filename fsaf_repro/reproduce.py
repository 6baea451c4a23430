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

The run is configure, plan, execute: `resolve_config` resolves the options, the environment and the
defaults once into a frozen RunConfig (checking the inputs read late before any work); `probe_host`
says what this host offers (atc, the runtimes, the soc version); `plan(config, probes)` declares the
stages in order, a step that cannot run here being an entry with its reason; `execute` keys each stage
from its declaration and reuses or runs it. Stage bodies are module-level `run_<stage>(ctx)` functions in
fsaf_repro.stages (which does not import this module).
perf.json, the report's inputs (report_inputs.json, with the parity mAP deltas) and report.md are the
report stage's outputs. Adding a stage: its body in fsaf_repro.stages, its entry in `plan` and its version in
fsaf_repro.stagebook.STAGE_VERSIONS. The stage book (declarations, keys, reuse) is fsaf_repro.stagebook.
"""
import copy
import inspect
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from . import __version__
from .backends.base import MODEL_CHECKPOINT, MODEL_OM, ONNX_MODEL_KINDS
from .convert import DEFAULT_PRECISION_MODE, PRECISION_MODES
from .data import ANNOTATION_RELPATH, IMAGE_DIR_NAME, coco_annotation_path, coco_image_dir
from .errors import CheckpointError, DataError, FsafReproError, PathError, ToolError
from .evaluate import DEFAULT_SCORER, SCORERS
from .fileio import atomic_write_json, file_sha256
from .jsonio import canonical_sha256
from .locking import run_lock
from .options import (BATCH_SIZE, BATCH_SIZES, BOOLEAN, COUNT, DURATION, IMAGE_SIDE, NON_NEGATIVE_INT, PROBABILITY,
                      SEED, TEXT, THREADS_OR_RUNTIME, Choice, OfType, check_batch_memory, check_options)
from .perf import DEFAULT_MIN_BATCHES, DEFAULT_MIN_SECONDS
from .pathroles import INPUT, OUTPUT, RolePath, check_path_roles
from .report import REPORT_NAME
from .runlog import RunLog
from .stagebook import (Late, Stage, StageBook, skipped_step, stage_key, under_spec_sections)
from .stages import (GENERATED_IMAGE_DIR, _load_extra_perf, backend_class, run_checkpoint, run_convert, run_data,
                     run_dataset, run_evaluate, run_export, run_fit, run_infer, run_parity, run_perf, run_report,
                     run_results)
from .torch_threads import set_intra_op_threads

# The embedded default: small enough for about a minute on a 2-core CPU (project choice).
EMBEDDED_NUM_IMAGES = 32  # the held-out set of the fitted weights: ~110 objects
EMBEDDED_INPUT_HW = (256, 384)
EMBEDDED_BATCH_SIZES = (1, 2)
EMBEDDED_SEED = 0
# Without a checkpoint, the weights are fitted on generated shapes (fsaf_repro.train, docs/fitted-weights.md)
# for this many steps; 0 (--fit-steps 0) keeps the seeded weights. The fit's training set has its own seed, never the
# evaluated set's.
DEFAULT_FIT_STEPS = 1000  # = fsaf_repro.train.DEFAULTS['steps'] (test_reproduce_plan)
FIT_DATA_SEED_OFFSET = 1000
DEFAULT_CPU_BATCH_SIZES = (1, 4)
# pure-inference timing: at least this many timed batches and seconds per backend and batch size,
# warm-up excluded (the reasons, measured: fsaf_repro.perf DEFAULT_MIN_BATCHES)
DEFAULT_PERF_LOOPS = DEFAULT_MIN_BATCHES
DEFAULT_PERF_MIN_SECONDS = DEFAULT_MIN_SECONDS
DEFAULT_PERF_WARMUP = 1
DEFAULT_PARITY_IMAGES = 3

# Backends tried by default (those available on this host run, the others are listed as skipped).
# What each takes and how its records are labelled are facts of its class (fsaf_repro.backends.base).
DEFAULT_BACKENDS = ("torch", "onnxruntime", "aclruntime", "onnxruntime-cann")
# ...and on the embedded default, the om's CPU stand-in (fp16 emulated; hours at the recipe's size and count)
EMBEDDED_EXTRA_BACKENDS = ("fp16-emulated",)
FLAVOURS = ("onnx-nms", "raw", "ascend-nms")
REFERENCE_BACKEND = "torch"
ENV_CHECKPOINT = "FSAF_CHECKPOINT"
ENV_COCO_ROOT = "FSAF_COCO_ROOT"


# The declared kind of each option of resolve_config / run_reproduce (fsaf_repro.options); the command
# line's `reproduce` verb uses the same declarations as its argparse types. None is "the default" for
# every option; 0 is a value only where its kind says what it means (threads: the runtimes' own count,
# fit_steps: the seeded weights, no fit). The paths are checked by resolve_inputs and pathroles.
OPTION_KINDS = {
    "backends": OfType((str, list, tuple), "comma-separated backend names"), "batch_sizes": BATCH_SIZES,
    "infer_batch_size": BATCH_SIZE, "height": IMAGE_SIDE, "width": IMAGE_SIDE, "num_images": COUNT, "limit": COUNT,
    "score_threshold": PROBABILITY, "scorer": Choice(SCORERS), "perf_loops": COUNT, "perf_warmup": NON_NEGATIVE_INT,
    "perf_min_seconds": DURATION,
    "parity_images": COUNT, "seed": SEED, "soc_version": TEXT, "precision_mode": Choice(PRECISION_MODES),
    "extra_perf": OfType((list, tuple), "a list of perf record files"), "threads": THREADS_OR_RUNTIME,
    "perf_threads": THREADS_OR_RUNTIME, "trusted": BOOLEAN, "progress": BOOLEAN, "echo": BOOLEAN,
    "fit_steps": NON_NEGATIVE_INT, "npu_present": BOOLEAN,
    "environ": OfType(dict, "a mapping of environment variables"),
}
# the paths resolve_config takes, checked as paths (not by a kind)
PATH_OPTIONS = ("run_dir", "checkpoint", "coco_root")


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
            raise CheckpointError(f"checkpoint not found: {checkpoint} (given by --checkpoint or {ENV_CHECKPOINT}); "
                                  "pass the official fsaf_r50_fpn_1x_coco-94ccc51f.pth, or give no checkpoint to run "
                                  "on seeded weights")
    if coco_root is not None:
        coco_root = os.path.abspath(os.path.expanduser(str(coco_root)))
        if not os.path.isdir(coco_root):
            raise DataError(f"COCO root not found: {coco_root} (given by --coco-root or {ENV_COCO_ROOT}); it must "
                            f"hold {IMAGE_DIR_NAME}/ and {ANNOTATION_RELPATH}")
        for rel in (ANNOTATION_RELPATH, IMAGE_DIR_NAME):
            if not os.path.exists(os.path.join(coco_root, rel)):
                raise DataError(f"COCO root {coco_root} has no {rel} (expected <root>/{IMAGE_DIR_NAME}/*.jpg and "
                                f"<root>/{ANNOTATION_RELPATH})")
    return checkpoint, coco_root


def parse_list(text, what):
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        return list(text)
    items = [part.strip() for part in str(text).split(",") if part.strip()]
    if not items:
        raise FsafReproError(f"{what} is empty")
    return items


def parse_sizes(text):
    items = parse_list(text, "--batch-sizes")
    if items is None:
        return None
    try:
        sizes = [int(item) for item in items]
    except ValueError:
        raise FsafReproError(f"--batch-sizes must be comma-separated integers, got {text!r}") from None
    if any(size < 1 for size in sizes):
        raise FsafReproError(f"--batch-sizes must be positive, got {text!r}")
    return sorted(set(sizes))


def default_threads(cpu_count=None):
    """Intra-op threads of the CPU runtimes: all cores but one, which the image loader needs.

    With as many runtime threads as cores, the loader's threads (or any other process) preempt a
    runtime thread and its parallel loops wait at every barrier: on a busy 2-core host torch eager
    then runs several times slower than on one thread.
    """
    count = cpu_count or os.cpu_count() or 1
    return max(1, int(count) - 1)


# ----------------------------------------------------------------------------------------------
# The run


def default_run_dir(embedded, checkpoint, coco_root, fit_steps):
    """runs/<weights>_<data>: the name says where the weights come from (a given checkpoint's name,
    `fitted<N>` for weights the run fits in N steps, `seeded` for the untrained seeded weights) and what
    they are evaluated on, so that runs of different weights never share (and overwrite) a directory:
    `reproduce --fit-steps 0` writes runs/embedded-seeded, the fitted default runs/embedded-fitted1000."""
    if checkpoint:
        weights = os.path.splitext(os.path.basename(checkpoint))[0]
    else:
        weights = f"fitted{fit_steps}" if fit_steps > 0 else "seeded"
    if embedded:
        return os.path.join("runs", f"embedded-{weights}")
    data = os.path.basename(coco_root.rstrip(os.sep)) if coco_root else "generated"
    return os.path.join("runs", f"{weights}_{data}")


# ----------------------------------------------------------------------------------------------
# Configure: one frozen record of the run's settings, resolved once


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run, resolved from the options, the environment and the defaults
    (resolve_config). `checkpoint` / `coco_root` are the given ones (None: generated by the run)."""

    run_dir: str
    checkpoint: Optional[str]
    coco_root: Optional[str]
    backends: Tuple[str, ...]
    batch_sizes: Tuple[int, ...]
    infer_batch_size: int
    height: int
    width: int
    num_images: int
    limit: Optional[int]
    score_threshold: float
    scorer: str
    perf_loops: int
    perf_warmup: int
    parity_images: int
    seed: int
    soc_version: Optional[str]
    precision_mode: str
    extra_perf: Tuple[str, ...]
    threads: Optional[int]
    perf_threads: Optional[int]
    trust_checkpoint: bool
    progress: bool
    echo: bool
    fit_steps: int = 0
    perf_min_seconds: float = DEFAULT_PERF_MIN_SECONDS

    @property
    def fitted(self) -> bool:
        # the run makes its weights by fitting them on generated shapes (not the seeded weights)
        return self.seeded and self.fit_steps > 0

    @property
    def seeded(self) -> bool:
        return self.checkpoint is None

    @property
    def generated(self) -> bool:
        return self.coco_root is None

    @property
    def embedded(self) -> bool:
        return self.seeded and self.generated

    @property
    def canvas(self) -> List[int]:
        return [self.height, self.width]

    @property
    def trusted(self) -> bool:
        # seeded weights were written by this run: loading them needs no unpickling caution
        return bool(self.trust_checkpoint or self.seeded)

    @property
    def checkpoint_path(self) -> str:
        if self.fitted:
            return os.path.join(self.run_dir, "inputs", f"fsaf_fit_generated_{self.seed}.pth")
        if self.seeded:
            return os.path.join(self.run_dir, "inputs", f"fsaf_seeded_{self.seed}.pth")
        return self.checkpoint

    @property
    def data_root(self) -> str:
        return os.path.join(self.run_dir, "inputs", "coco") if self.generated else self.coco_root

    @property
    def annotation_file(self) -> str:
        return coco_annotation_path(self.data_root)

    @property
    def image_dir(self) -> str:
        return coco_image_dir(self.data_root)

    def path(self, *parts) -> str:
        return os.path.join(self.run_dir, *parts)


def resolve_config(run_dir=None, checkpoint=None, coco_root=None, backends=None, batch_sizes=None,
                   infer_batch_size=None, height=None, width=None, num_images=None, limit=None,
                   score_threshold=None, scorer=DEFAULT_SCORER, perf_loops=None, perf_warmup=None,
                   parity_images=None, seed=EMBEDDED_SEED, soc_version=None, precision_mode=DEFAULT_PRECISION_MODE,
                   extra_perf=(), threads=None, perf_threads=None, trusted=False, progress=False, echo=True,
                   environ=None, npu_present=None, fit_steps=None, perf_min_seconds=None) -> RunConfig:
    """The RunConfig of run_reproduce's arguments (None: the embedded default or the recipe's value).

    Every option is checked against its declared kind (OPTION_KINDS) first. Inputs read only late in
    the run are checked here, before minutes of export and inference: the paths, the COCO annotation
    file, the extra perf records, the backend names, and the memory of the batch sizes at the input size.
    `npu_present` (for the default batch sizes) is probed when not given.
    """
    options = dict(locals())
    paths = {name: options.pop(name) for name in PATH_OPTIONS}
    checked = check_options(OPTION_KINDS, options, "reproduce", spell=lambda name: "--" + name.replace("_", "-"))
    return _resolve_checked(**paths, **checked)


def _resolve_checked(run_dir, checkpoint, coco_root, backends, batch_sizes, infer_batch_size, height, width,
                     num_images, limit, score_threshold, scorer, perf_loops, perf_warmup, parity_images, seed,
                     soc_version, precision_mode, extra_perf, threads, perf_threads, trusted, progress, echo,
                     environ, npu_present, fit_steps, perf_min_seconds) -> RunConfig:
    """resolve_config's body, on options already checked against their kinds."""
    from .backends import get_backend_class
    from .spec import input_constants, model_constants, performance_reference
    checkpoint, coco_root = resolve_inputs(checkpoint, coco_root, environ)
    if coco_root is not None:
        from .data import read_annotation_file
        read_annotation_file(coco_annotation_path(coco_root))
    embedded = checkpoint is None and coco_root is None
    run_dir = os.path.abspath(run_dir or default_run_dir(embedded, checkpoint, coco_root,
                                                         _fit_steps(fit_steps, checkpoint)))
    _refuse_run_outputs_as_extra_perf(extra_perf, run_dir)
    _load_extra_perf(extra_perf)
    default_hw = EMBEDDED_INPUT_HW if embedded else (input_constants()["height"], input_constants()["width"])
    # Backends run over the data set. torch is also the parity reference: left out of --backends it still
    # runs the parity batch (a few images), not the data set (hours on a CPU at the recipe's size).
    backend_names = parse_list(backends, "--backends") or (
        list(DEFAULT_BACKENDS) + (list(EMBEDDED_EXTRA_BACKENDS) if embedded else []))
    sizes = parse_sizes(batch_sizes)
    if sizes is None:
        npu_backends = [b for b in backend_names if backend_class(b).device_kind == "npu"]
        if embedded:
            sizes = list(EMBEDDED_BATCH_SIZES)
        elif npu_backends and (_npu_present(backend_names) if npu_present is None else npu_present):
            sizes = list(performance_reference()["batch_sizes"])
        else:
            sizes = list(DEFAULT_CPU_BATCH_SIZES)
    for name in backend_names:
        try:
            get_backend_class(name)  # an unknown name is an error (naming the known ones), before any work
        except ImportError:
            pass  # a backend module that fails to import: probe_host reports it unavailable
    config = RunConfig(
        run_dir=run_dir,
        checkpoint=checkpoint, coco_root=coco_root, backends=tuple(backend_names), batch_sizes=tuple(sizes),
        infer_batch_size=_default(infer_batch_size, sizes[0]), height=_default(height, default_hw[0]),
        width=_default(width, default_hw[1]), num_images=_default(num_images, EMBEDDED_NUM_IMAGES), limit=limit,
        score_threshold=_default(score_threshold, float(model_constants()["score_threshold"])),
        scorer=scorer, perf_loops=_default(perf_loops, DEFAULT_PERF_LOOPS),
        perf_warmup=_default(perf_warmup, DEFAULT_PERF_WARMUP),
        parity_images=_default(parity_images, DEFAULT_PARITY_IMAGES), seed=seed, soc_version=soc_version,
        precision_mode=precision_mode, extra_perf=tuple(extra_perf or ()),
        threads=default_threads() if threads is None else (threads or None),
        # pure-inference timing has no loader beside it: the whole host, as the recipe's tools use the device
        perf_threads=(os.cpu_count() or 1) if perf_threads is None else (perf_threads or None),
        trust_checkpoint=bool(trusted), progress=bool(progress), echo=bool(echo),
        fit_steps=_fit_steps(fit_steps, checkpoint),
        perf_min_seconds=_default(perf_min_seconds, DEFAULT_PERF_MIN_SECONDS))
    _check_batch_memory(config, infer_batch_size)
    return config


def _default(value, default):
    """`value`, or `default` when it is None (and only then: 0 is a value, refused by its kind or meant)."""
    return default if value is None else value


def _check_batch_memory(config, infer_batch_size):
    """Each batch size's memory at the run's input size; a given data set batch above the images run."""
    # a generated set's image count is known here; a COCO root's is its annotation file's
    images = (config.limit or config.num_images) if config.generated else config.limit
    check_batch_memory(config.infer_batch_size, config.height, config.width, "--infer-batch-size",
                       batches_in_flight=4, images=images if infer_batch_size is not None else None)
    for size in config.batch_sizes:
        check_batch_memory(size, config.height, config.width, "--batch-sizes")


def _refuse_run_outputs_as_extra_perf(extra_perf, run_dir):
    """An --extra-perf file inside the run directory is this run's own output (its perf.json, a stage's
    records): read back as extra records it would add another copy of them on every rerun."""
    run_real = os.path.realpath(run_dir)
    for path in extra_perf or ():
        real = os.path.realpath(str(path))
        if os.path.commonpath([real, run_real]) == run_real:
            raise PathError(f"--extra-perf {path} lies inside the run directory {run_dir}: it is an output of this "
                            "run, and reading it back would add this run's records again on every rerun; give "
                            "records measured elsewhere (copy them out of the run directory first)")


def _fit_steps(fit_steps, checkpoint):
    """Steps of the fit that makes the weights when no checkpoint is given (0: seeded weights, no fit)."""
    if checkpoint is not None:
        return 0  # a given checkpoint is used as it is
    return DEFAULT_FIT_STEPS if fit_steps is None else fit_steps  # >= 0 by its kind


@dataclass(frozen=True)
class HostProbes:
    """What this host offers a run: atc's path (None: not on PATH), the reason each backend of the run
    (and the parity reference) cannot run here, the soc version (given or detected) or why it is unknown."""

    atc: Optional[str]
    unavailable: Dict[str, str] = field(default_factory=dict)
    soc_version: Optional[str] = None
    soc_error: Optional[str] = None


def probe_host(config: RunConfig) -> HostProbes:
    """The HostProbes of this host for `config` (runs `npu-smi info` when atc is here and no soc is given)."""
    from .backends import backend_availability
    unavailable = {}
    for name in set(config.backends) | {REFERENCE_BACKEND}:
        avail = backend_availability(name)
        if not avail.ok:
            unavailable[name] = avail.reason
    atc = shutil.which("atc")
    soc, soc_error = config.soc_version, None
    if atc is not None and soc is None:
        from .convert import detect_soc_version
        try:
            soc = detect_soc_version(log_path=config.path("logs", "npu-smi.log"))
        except ToolError as exc:
            soc_error = str(exc)
    return HostProbes(atc=atc, unavailable=unavailable, soc_version=soc, soc_error=soc_error)


# ----------------------------------------------------------------------------------------------
# Late values (stagebook.Late): known once earlier stages have run


class RunState:
    """What a run knows as it goes: each stage's key and result, and the image set of the data stage.

    `book` is the run's StageBook (None when only keys are computed, see plan_keys)."""

    def __init__(self, config, book=None):
        self.config = config
        self.book = book
        self.keys = book.keys if book is not None else {}
        self.results = {}
        self.status = {}
        self._image_set = None

    def image_set(self):
        # The image set (ids, sizes, label -> category id by the spec's class names) is what the later
        # stages consume of the data stage: it is built under the data stage's spec sections.
        if self._image_set is None:
            from .data import CocoImageSet
            config = self.config
            self._image_set = under_spec_sections("data", DATA_SPEC, lambda: CocoImageSet(
                config.annotation_file, config.image_dir, limit=config.limit, height=config.height,
                width=config.width))
        return self._image_set


def late_image_set(state):
    return state.image_set()


def late_image_ids_sha(state):
    return canonical_sha256(state.image_set().image_ids)


def late_image_files(state, count=None):
    """What a stage that decodes images reads of them: their bytes, by file name (not by folder)."""
    metas = state.image_set().metas
    return dict((m.file_name, m.path) for m in (metas if count is None else metas[:count]))


def late_image_ids(state, count):
    return state.image_set().image_ids[:count]


def late_om(state, batch_size):
    """The om file convert built for a batch size."""
    return state.config.path(state.results["convert"]["oms"][str(batch_size)])


def late_results(state, names):
    """Results of earlier stages that a later one reports (None for a stage not in this run)."""
    return dict((name, state.results.get(name)) for name in names)


def late_stage_table(state):
    """Each stage the book holds (the report lists them), with its key and seconds."""
    if state.book is None:
        return [{"name": n, "key": k, "seconds": None} for n, k in sorted(state.keys.items(),
                                                                         key=lambda item: _stage_rank(item[0]))]
    book = state.book
    return [{"name": n, "key": book.key(n), "seconds": book.seconds(n)}
            for n in sorted(book.entries, key=_stage_rank) if n != "report"]


def _resolved(values, state):
    return dict((k, v(state) if isinstance(v, Late) else v) for k, v in values.items())


def resolve_stage(stage, state):
    """`stage` with its Late values resolved against what the run knows now."""
    resolved = copy.copy(stage)
    resolved.params = _resolved(stage.params, state)
    resolved.inputs = _resolved(stage.inputs, state)
    resolved.options = _resolved(stage.options, state)
    return resolved


# ----------------------------------------------------------------------------------------------
# Plan: the stages of a run, declared from its config and what the host offers


DATA_SPEC = ("coco_classes", "coco_category_ids", "input")


def plan(config: RunConfig, probes: HostProbes) -> List[Stage]:
    """The run's stages in order, each declared (Stage); steps this host cannot run are entries with
    their reason. Adding a stage: a body `run_<name>(ctx)` in fsaf_repro.stages and its entry here (and a version in
    STAGE_VERSIONS)."""
    stages = []
    if config.fitted:
        stages.append(_fit_stage(config))
    elif config.seeded:
        stages.append(Stage("checkpoint", run_checkpoint, params={"seed": config.seed},
                            outputs={"checkpoint": config.checkpoint_path},
                            spec=("model", "input", "coco_classes")))
    if config.generated:
        # fitted weights know the classes style's looks; seeded weights see the default style's shapes
        stages.append(Stage("dataset", run_dataset, params={"num_images": config.num_images, "seed": config.seed,
                                                            "style": "classes" if config.fitted else "default"},
                            outputs={"root": config.data_root}, spec=("coco_classes", "coco_category_ids")))
    stages.append(Stage("export", run_export, params={"canvas": config.canvas, "flavours": list(FLAVOURS),
                                                      "batch": "dynamic"},
                        inputs={"checkpoint": config.checkpoint_path}, outputs=_onnx_paths(config),
                        spec=("model", "input"), upstream=(_checkpoint_stage(config),),
                        options={"trusted": config.trusted, "run_dir": config.run_dir}))
    convert = _convert_entry(config, probes)
    stages.append(convert)
    # Generated images are keyed by their content (the dataset stage's outputs), not by where the run
    # directory is, so a copied or moved run directory is still reused.
    stages.append(Stage("data", run_data, params={"image_dir": GENERATED_IMAGE_DIR if config.generated
                                                  else config.image_dir,
                                                  "limit": config.limit, "canvas": config.canvas},
                        inputs={"annotation": config.annotation_file}, spec=DATA_SPEC,
                        outputs={"manifest": config.path("data_manifest.json")},
                        upstream=("dataset" if config.generated else None,),
                        options={"image_set": Late(late_image_set), "image_dir": config.image_dir}))
    models, skips = _backend_models(config, probes, convert)
    stages.extend(skipped_step("infer:" + name, reason, label=name) for name, reason in skips.items())
    for name in models:
        stages.extend(_dataset_stages(config, probes, name, models[name]))
    for name in models:
        if name != "null":
            stages.append(_perf_stage(config, probes, name, models[name]))
    stages.append(_parity_entry(config, probes, models))
    stages.append(_report_stage(config, probes, stages, models))
    return stages


def _fit_stage(config):
    """The checkpoint stage of a run that fits its weights: keyed by the fit's parameters, seeds, thread
    count (the fit is deterministic for a seed and thread count) and fsaf_repro.train's FIT_VERSION."""
    from .train import DEFAULTS, FIT_VERSION
    fit = dict(DEFAULTS, steps=config.fit_steps, height=config.height, width=config.width)
    return Stage("checkpoint", run_fit,
                 params={"seed": config.seed, "data_seed": config.seed + FIT_DATA_SEED_OFFSET, "fit": fit,
                         "threads": os.cpu_count() or 1, "fit_version": FIT_VERSION},
                 outputs={"checkpoint": config.checkpoint_path},
                 spec=("model", "input", "coco_classes", "coco_category_ids"),
                 options={"progress": config.progress or sys.stderr.isatty()})


def _onnx_paths(config):
    return dict((f, config.path("onnx", f"fsaf_{f}.onnx")) for f in FLAVOURS)


def _checkpoint_stage(config):
    """The stage that wrote the checkpoint, if this run did: a consumer of the file also consumes it."""
    return "checkpoint" if config.seeded else None


def _om_sizes(config):
    # one static om per throughput batch size, and one for the data set inference
    return sorted(set(config.batch_sizes) | {config.infer_batch_size})


def _convert_entry(config, probes):
    if probes.atc is None:
        return skipped_step("convert", "atc is not on PATH: install the CANN toolkit and `source "
                                       "/usr/local/Ascend/ascend-toolkit/set_env.sh` to build the .om files")
    if probes.soc_version is None:
        return skipped_step("convert", f"atc is on PATH but the soc version is unknown: {probes.soc_error}")
    onnx = _onnx_paths(config)["ascend-nms"]
    # atc reads the ONNX sidecar too (input name and shape)
    return Stage("convert", run_convert, params={"batch_sizes": _om_sizes(config), "soc_version": probes.soc_version,
                                                 "precision_mode": config.precision_mode, "atc": probes.atc,
                                                 "canvas": config.canvas},
                 inputs={"onnx": onnx, "onnx_sidecar": onnx + ".json"}, outputs={"om_dir": config.path("om")},
                 upstream=("export",), options={"run_dir": config.run_dir})


def _backend_models(config, probes, convert):
    """({backend: model path or Late} of the backends that run over the data set, {backend: why not})."""
    models, skips = {}, {}
    for name in config.backends:
        kind = backend_class(name).model_kind
        if name in probes.unavailable:
            skips[name] = f"unavailable: {probes.unavailable[name]}"
        elif kind == MODEL_OM:
            if convert.skipped is not None:
                skips[name] = (f"needs an om for batch size {config.infer_batch_size}: convert was skipped "
                               f"({convert.skipped})")
            else:
                models[name] = Late(late_om, config.infer_batch_size)
        elif kind in ONNX_MODEL_KINDS:
            models[name] = _onnx_paths(config)[kind]
        elif kind == MODEL_CHECKPOINT:
            models[name] = config.checkpoint_path
        elif kind is None:
            models[name] = None  # a backend without a model file (null)
        else:
            skips[name] = f"not driven by reproduce (it takes a {kind} model, which reproduce does not make)"
    return models, skips


def _model_stage(config, name):
    """The stage of this run that wrote backend `name`'s model file, if any."""
    kind = backend_class(name).model_kind
    if kind == MODEL_OM:
        return "convert"
    if kind in ONNX_MODEL_KINDS:
        return "export"
    return _checkpoint_stage(config) if kind == MODEL_CHECKPOINT else None


def _record_labels(config, probes, name):
    cls = backend_class(name)
    return {"device": cls.device_label(probes.soc_version), "precision": cls.precision(config.precision_mode)}


def _dataset_stages(config, probes, name, model):
    """Inference over the data set, the score threshold and the evaluation of one backend."""
    infer_path = config.path("infer", f"{name}_bs{config.infer_batch_size}.json")
    results_path = config.path(f"results_{name}.json")
    image_set = Late(late_image_set)
    # the image set comes from the data stage; the images are keyed by their bytes
    infer = Stage("infer:" + name, run_infer,
                  params=dict(backend=name, image_ids_sha256=Late(late_image_ids_sha), canvas=config.canvas,
                              batch_size=config.infer_batch_size, threads=config.threads,
                              **_record_labels(config, probes, name)),
                  inputs={"model": model, "images": Late(late_image_files)}, outputs={"detections": infer_path},
                  spec=("model", "input", "coco_classes", "coco_category_ids"),
                  upstream=("data", _model_stage(config, name)),
                  options={"trusted": config.trusted, "progress": config.progress, "image_set": image_set})
    results = Stage("results:" + name, run_results, params={"score_threshold": config.score_threshold},
                    inputs={"infer": infer_path}, outputs={"results": results_path}, upstream=("infer:" + name,))
    evaluate = Stage("evaluate:" + name, run_evaluate,
                     params={"scorer": config.scorer, "image_ids_sha256": Late(late_image_ids_sha), "backend": name},
                     inputs={"results": results_path, "annotation": config.annotation_file},
                     outputs={"metrics": config.path(f"metrics_{name}.json")},
                     spec=("evaluation", "accuracy"), upstream=("results:" + name, "data"),
                     options={"image_set": image_set})
    return [infer, results, evaluate]


def _perf_stage(config, probes, name, model):
    """Pure-inference throughput of one backend at each batch size."""
    if backend_class(name).model_kind == MODEL_OM:
        models = dict((f"om_bs{bs}", Late(late_om, bs)) for bs in config.batch_sizes)
    else:
        models = {"model": model}
    return Stage("perf:" + name, run_perf,
                 params=dict(backend=name, batch_sizes=list(config.batch_sizes), loops=config.perf_loops,
                             min_seconds=config.perf_min_seconds, warmup=config.perf_warmup, canvas=config.canvas,
                             threads=config.perf_threads,
                             **_record_labels(config, probes, name)),
                 inputs=models, outputs={"records": config.path("perf", f"perf_{name}.json")},
                 spec=("input", "model"), upstream=(_model_stage(config, name),), options={"trusted": config.trusted})


def _parity_sides(config, probes, models):
    """(label, backend name, model) of the parity batch: the torch reference first."""
    sides = []
    if REFERENCE_BACKEND not in probes.unavailable:
        sides.append(("torch", REFERENCE_BACKEND, config.checkpoint_path))
    onnx = _onnx_paths(config)
    sides.extend((f"{name} (onnx-nms)", name, onnx["onnx-nms"]) for name in models
                 if backend_class(name).model_kind == "onnx-nms")
    if "onnxruntime" in models:
        sides.append(("onnxruntime (raw + host NMS)", "onnxruntime", onnx["raw"]))
    sides.extend([(f"{name} (om, ascend-nms)", name, models[name])
                  for name in models if backend_class(name).model_kind == MODEL_OM][:1])
    # other checkpoint backends (the fp16 stand-in): the checkpoint, labelled as what runs it
    sides.extend((f"{name} (checkpoint)", name, config.checkpoint_path)
                 for name in models if name != REFERENCE_BACKEND and backend_class(name).model_kind == MODEL_CHECKPOINT)
    return sides


def _parity_entry(config, probes, models):
    sides = _parity_sides(config, probes, models)
    if len(sides) < 2 or sides[0][1] != REFERENCE_BACKEND:
        return skipped_step("parity", "needs the torch reference and at least one exported-model backend")
    image_ids = Late(_parity_image_ids, config.parity_images)
    inputs = dict(("model:" + label, model) for label, _, model in sides)
    inputs["images"] = Late(_parity_image_files, config.parity_images)
    return Stage("parity", run_parity,
                 params={"sides": [[label, name] for label, name, _ in sides], "image_ids": image_ids,
                         "canvas": config.canvas, "threads": config.threads, "om_precision": config.precision_mode},
                 inputs=inputs, outputs={"parity": config.path("parity.json")}, spec=("parity", "model", "input"),
                 upstream=("data",) + tuple(_model_stage(config, name) for _, name, _ in sides),
                 options={"trusted": config.trusted, "image_set": Late(late_image_set)})


def _parity_image_ids(state, parity_images):
    return late_image_ids(state, min(parity_images, len(state.image_set())))


def _parity_image_files(state, parity_images):
    return late_image_files(state, min(parity_images, len(state.image_set())))


def _report_stage(config, probes, stages, models):
    """report.md from every stage of the run; its inputs (report_inputs.json) and perf.json are its outputs."""
    from . import report as report_module
    runs = [s for s in stages if s.skipped is None]
    skipped = dict((s.label, s.skipped) for s in stages if s.skipped is not None)
    parity = next(s for s in stages if s.name == "parity")
    inputs = {"annotation": config.annotation_file, "checkpoint": config.checkpoint_path,
              "images": Late(late_image_files, report_module.DETECTION_IMAGES)}
    inputs.update(("results:" + s.name.partition(":")[2], s.outputs["results"]) for s in runs
                  if s.name.startswith("results:"))
    inputs.update(("metrics:" + s.name.partition(":")[2], s.outputs["metrics"]) for s in runs
                  if s.name.startswith("evaluate:"))
    inputs.update((s.name, s.outputs["records"]) for s in runs if s.name.startswith("perf:"))
    inputs.update((f"extra_perf:{i}", path) for i, path in enumerate(config.extra_perf))
    if parity.skipped is None:
        inputs["parity"] = parity.outputs["parity"]
    params = {"run_dir": config.run_dir, "embedded": config.embedded, "seeded": config.seeded,
              "generated": config.generated, "canvas": config.canvas, "batch_sizes": list(config.batch_sizes),
              "infer_batch_size": config.infer_batch_size, "score_threshold": config.score_threshold,
              "scorer": config.scorer, "threads": config.threads, "perf_threads": config.perf_threads,
              "perf_loops": config.perf_loops, "perf_warmup": config.perf_warmup,
              "perf_min_seconds": config.perf_min_seconds, "soc_version": probes.soc_version,
              "backends": Late(late_backend_rows, _backend_rows(config, probes, models, skipped)),
              "skipped_steps": dict((k, v) for k, v in skipped.items() if k in ("convert", "parity")),
              "extra_perf": list(config.extra_perf),
              "dataset_backends": list(models), "perf_backends": [n for n in models if n != "null"],
              "stage_results": Late(late_results, ["checkpoint", "export", "convert"] + ["infer:" + n for n in models]),
              "parity_backends": dict((label, name) for label, name, _ in _parity_sides(config, probes, models)),
              "stages": Late(late_stage_table), "plots": report_module.plots_availability()[0]}
    # Every stage of this run feeds the report (its context lists their keys and records).
    return Stage("report", run_report, params=params, inputs=inputs,
                 outputs={"context": config.path("report_inputs.json"), "perf": config.path("perf.json")},
                 spec=("accuracy", "performance", "coco_classes", "coco_category_ids", "input", "checkpoint"),
                 upstream=tuple(sorted((s.name for s in runs), key=_stage_rank)),
                 options={"run_dir": config.run_dir, "image_set": Late(late_image_set), "image_dir": config.image_dir})


def _backend_rows(config, probes, models, skipped):
    rows = []
    for name in config.backends:
        rows.append(dict({"name": name, "status": "ran" if name in models else "skipped",
                          "reason": skipped.get(name), "model": models.get(name)},
                         **_record_labels(config, probes, name)))
    return rows


def late_backend_rows(state, rows):
    """The report's backend rows, each model named relative to the run directory when it is in it
    (an om is known once convert has run)."""
    run_dir = state.config.run_dir
    named = []
    for row in rows:
        model = row["model"](state) if isinstance(row["model"], Late) else row["model"]
        named.append(dict(row, model=os.path.relpath(model, run_dir) if model and model.startswith(run_dir)
                          else model))
    return named


# ----------------------------------------------------------------------------------------------
# Execute: key each declared stage, reuse or run it


def execute(stages: List[Stage], book: "StageBook", state: RunState) -> RunState:
    """Run the plan in order: each stage is keyed from its declaration (Late values resolved now) and
    reused or run by the book; a skipped entry is logged and recorded with its reason."""
    for stage in stages:
        if stage.skipped is not None:
            state.status[stage.name] = f"skipped: {stage.skipped}"
            book.log("skipped: {} ({})".format(stage.name if stage.label == stage.name
                                               else "backend " + stage.label, stage.skipped))
            continue
        state.results[stage.name] = book.run(resolve_stage(stage, state))
        state.status[stage.name] = book.status[stage.name]
    return state


def plan_keys(stages, state, recipe=None, digest=file_sha256):
    """{stage name: key} of a plan without running it: for a plan whose input files exist (a given
    checkpoint and COCO root), with the results of earlier stages absent (None)."""
    from .spec import load_recipe_spec
    recipe = load_recipe_spec() if recipe is None else recipe
    for stage in stages:
        if stage.skipped is None:
            state.keys[stage.name] = stage_key(resolve_stage(stage, state), recipe, state.keys, digest)[0]
    return dict(state.keys)


# ----------------------------------------------------------------------------------------------
# The run


def run_reproduce(*args, **kwargs):
    """Run the pipeline; returns a summary dict (run_dir, report path, stage statuses, skips, metrics).

    Arguments left None take the embedded default (no checkpoint, no COCO root) or the recipe's values:
    see `resolve_config`. torch's thread count (process-wide, set by a `threads` option) is restored.
    """
    import torch
    call = inspect.signature(_run_reproduce).bind(*args, **kwargs)
    call.apply_defaults()
    given = call.arguments
    checkpoint, coco_root = resolve_inputs(given["checkpoint"], given["coco_root"], given["environ"])
    given["run_dir"] = os.path.abspath(given["run_dir"] or default_run_dir(
        checkpoint is None and coco_root is None, checkpoint, coco_root, _fit_steps(given["fit_steps"], checkpoint)))
    # the run directory must not be an input, nor lie inside the COCO root (given or from the environment)
    check_path_roles([RolePath("--run-dir", OUTPUT, given["run_dir"])] + [
        RolePath(option, INPUT, path) for option, path in (
            (f"--checkpoint (or ${ENV_CHECKPOINT})", checkpoint), (f"--coco-root (or ${ENV_COCO_ROOT})", coco_root))
        if path is not None] + [RolePath("--extra-perf", INPUT, str(path)) for path in given["extra_perf"] or ()],
        "reproduce")
    # one writer per run directory: a second run on it refuses at once (fsaf_repro.locking)
    with run_lock(given["run_dir"], "reproduce"):
        torch_threads = torch.get_num_threads()
        try:
            return _run_reproduce(*call.args, **call.kwargs)
        finally:
            set_intra_op_threads(torch_threads)


def _run_reproduce(run_dir=None, checkpoint=None, coco_root=None, backends=None, batch_sizes=None,
                   infer_batch_size=None, height=None, width=None, num_images=None, limit=None,
                   score_threshold=None, scorer=DEFAULT_SCORER, perf_loops=None, perf_warmup=None,
                   parity_images=None, seed=EMBEDDED_SEED, soc_version=None, precision_mode=DEFAULT_PRECISION_MODE,
                   extra_perf=(), threads=None, perf_threads=None, trusted=False, progress=False, echo=True,
                   environ=None, fit_steps=None, perf_min_seconds=None):
    """Configure, plan, execute (see `run_reproduce` and the module docstring)."""
    wall_start = time.time()
    options = dict(locals())  # this function's arguments: resolve_config takes the same names
    del options["wall_start"]
    config = resolve_config(**options)
    if config.threads:
        set_intra_op_threads(config.threads)  # also for the export traces
    if not os.path.isdir(config.run_dir):
        os.makedirs(config.run_dir)
    log = RunLog(config.run_dir, echo=config.echo)
    log(f"run directory {config.run_dir} (fsaf-repro {__version__}, python {sys.version.split()[0]})")
    book = StageBook(config.run_dir, log)
    stages = plan(config, probe_host(config))
    state = execute(stages, book, RunState(config, book))
    log("checkpoint {} (sha256 {}{})".format(config.checkpoint_path, book.digest(config.checkpoint_path)[:16],
                                             ", fitted on generated shapes" if config.fitted else
                                             ", seeded weights" if config.seeded else ""))
    return _summary(config, stages, state, book, time.time() - wall_start)


def _summary(config, stages, state, book, wall):
    report_path = config.path(REPORT_NAME)
    stage_status = dict(book.status)
    ran = sorted(n for n, s in stage_status.items() if s == "ran")
    reused = sorted(n for n, s in stage_status.items() if s == "reused")
    book.log(f"done in {wall:.1f} s: {len(ran)} stage(s) ran, {len(reused)} reused; report {report_path}")
    from .evaluate import load_metrics
    runs = dict((s.name, s) for s in stages if s.skipped is None)
    metrics = dict((name.partition(":")[2], load_metrics(stage.outputs["metrics"])["stats"])
                   for name, stage in runs.items() if name.startswith("evaluate:"))
    summary = {"run_dir": config.run_dir, "report": report_path, "stages": stage_status,
               "skipped": dict((s.label, s.skipped) for s in stages if s.skipped is not None),
               "backends_run": [n.partition(":")[2] for n in runs if n.startswith("infer:")],
               "metrics": metrics, "wall_seconds": wall, "embedded": config.embedded,
               "perf": config.path("perf.json"),
               "parity": runs["parity"].outputs["parity"] if "parity" in runs else None}
    atomic_write_json(config.path("logs", "last_run.json"), summary)
    return summary


STAGE_ORDER = ("checkpoint", "dataset", "export", "convert", "data", "infer", "results", "evaluate", "perf",
               "parity", "report")


def _stage_rank(name):
    base, _, detail = name.partition(":")
    return (STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER), detail)


def _npu_present(backend_names):
    from .backends import backend_availability
    return any(backend_availability(b).ok for b in backend_names if backend_class(b).device_kind == "npu")
