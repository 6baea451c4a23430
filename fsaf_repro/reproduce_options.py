"""The options of `fsaf-repro reproduce`, each declared once: ReproduceOptions.

Every field of the frozen ReproduceOptions dataclass carries its declaration (OptionSpec in its
metadata): its kind (fsaf_repro.options: type and range), its help, and, for a path, its role. From
these the command line generates its arguments (fsaf_repro.cli.reproduce), the record checks every
value when it is made (before any stage runs: a misspelt choice is refused here, not by the stage that
reads it), and run_reproduce / resolve_config take the record itself. A field not meant for the command
line (`cli=False`: echo, environ, npu_present) is a library caller's or a test's.
"""
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional, Tuple

from .convert import DEFAULT_PRECISION_MODE, PRECISION_MODES
from .data import ANNOTATION_RELPATH, IMAGE_DIR_NAME
from .errors import OptionError
from .evaluate import DEFAULT_SCORER, SCORERS
from .options import (BATCH_SIZE, BATCH_SIZES, BOOLEAN, COUNT, DURATION, IMAGE_SIDE, NON_NEGATIVE_INT, PROBABILITY,
                      SEED, TEXT, THREADS_OR_RUNTIME, Choice, OfType, OptionKind)
from .perf import DEFAULT_MIN_BATCHES, DEFAULT_MIN_SECONDS

# The embedded default: small enough for a few minutes on a 2-core CPU (project choice).
EMBEDDED_NUM_IMAGES = 32  # the held-out set of the fitted weights: ~110 objects
EMBEDDED_INPUT_HW = (256, 384)
EMBEDDED_BATCH_SIZES = (1, 2)
EMBEDDED_SEED = 0
# Without a checkpoint, the weights are fitted on generated shapes (fsaf_repro.train) for this many
# steps; 0 (--fit-steps 0) keeps the seeded weights.
DEFAULT_FIT_STEPS = 1000  # = fsaf_repro.train.DEFAULTS['steps'] (test_reproduce_plan)
DEFAULT_CPU_BATCH_SIZES = (1, 4)
# pure-inference timing: at least this many timed batches and seconds per backend and batch size,
# warm-up excluded (the reasons, measured: fsaf_repro.perf DEFAULT_MIN_BATCHES)
DEFAULT_PERF_LOOPS = DEFAULT_MIN_BATCHES
DEFAULT_PERF_MIN_SECONDS = DEFAULT_MIN_SECONDS
DEFAULT_PERF_WARMUP = 1
DEFAULT_PARITY_IMAGES = 3

# Backends tried by default (those available on this host run, the others are listed as skipped).
DEFAULT_BACKENDS = ("torch", "onnxruntime", "aclruntime", "onnxruntime-cann")
# ...and on the embedded default, the om's CPU stand-in (fp16 emulated; hours at the recipe's size and count)
EMBEDDED_EXTRA_BACKENDS = ("fp16-emulated",)
ENV_CHECKPOINT = "FSAF_CHECKPOINT"
ENV_COCO_ROOT = "FSAF_COCO_ROOT"

# The path roles an option may have; the command line maps each to its checked argparse type.
INPUT_FILE, INPUT_DIR, OUTPUT_DIR = "input file", "input dir", "output dir"


class NameList(OptionKind):
    """Comma-separated names ("torch,onnxruntime", or a list of them): a tuple of non-empty names."""

    describe = "comma-separated names"

    def check(self, value, option):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
            raise self.refuse(value, option)
        names = tuple(item.strip() for item in items if item.strip())
        if not names:
            raise self.refuse(value, option, "empty")
        return names


class PathList(OptionKind):
    describe = "a list of file paths"

    def check(self, value, option):
        if not isinstance(value, (list, tuple)) or not all(isinstance(p, (str, os.PathLike)) for p in value):
            raise self.refuse(value, option)
        return tuple(str(p) for p in value)


PATH = OfType((str, os.PathLike), "a path")


@dataclass(frozen=True)
class OptionSpec:
    """One option's declaration. `kind` checks a value (None always means the default); `path` is the
    role of a path option and `env` the environment variable it falls back to; `switch` makes a
    store_true flag, `negation` the flag that turns it off; `repeatable` collects every use; `metavar`
    names its value in the help; `cli=False` keeps it off the command line."""

    kind: OptionKind
    help: str
    path: Optional[str] = None
    what: Optional[str] = None
    env: Optional[str] = None
    switch: bool = False
    negation: Optional[str] = None
    repeatable: bool = False
    metavar: Optional[str] = None
    cli: bool = True


def option(default: Any, kind: OptionKind, help: str, **declared: Any) -> Any:
    return field(default=default, metadata={"option": OptionSpec(kind, help, **declared)})


def spell(name: str) -> str:
    """How the command line spells option `name` (errors name it so)."""
    return "--" + name.replace("_", "-")


_BATCH_HELP = ("comma-separated batch sizes for conversion and throughput (default: {} for the embedded default, "
               "{} on a CPU host, the recipe's 1..64 with an NPU)").format(
    ",".join(map(str, EMBEDDED_BATCH_SIZES)), ",".join(map(str, DEFAULT_CPU_BATCH_SIZES)))


@dataclass(frozen=True)
class ReproduceOptions:
    """What a `reproduce` run is asked to do; None takes the embedded default or the recipe's value
    (resolve_config). Each value is checked against its declared kind when the record is made."""

    checkpoint: Optional[str] = option(None, PATH, f"mmdetection checkpoint (default: ${ENV_CHECKPOINT}; absent: "
                                       "weights made by the run)", path=INPUT_FILE, what="checkpoint",
                                       env=ENV_CHECKPOINT)
    coco_root: Optional[str] = option(None, PATH, f"COCO root with {IMAGE_DIR_NAME}/ and {ANNOTATION_RELPATH} "
                                      f"(default: ${ENV_COCO_ROOT}; absent: a generated set)", path=INPUT_DIR,
                                      what="COCO root", env=ENV_COCO_ROOT)
    run_dir: Optional[str] = option(None, PATH, "run directory (default: runs/<weights>_<data>, named by where the "
                                    "weights come from: runs/embedded-fitted1000 for the embedded default, "
                                    "runs/embedded-seeded with --fit-steps 0, runs/<checkpoint>_<coco root> with both "
                                    "given)", path=OUTPUT_DIR, what="run directory")
    backends: Optional[Tuple[str, ...]] = option(None, NameList(), "comma-separated backends (default: the "
                                                 "available ones among {})".format(", ".join(DEFAULT_BACKENDS)))
    batch_sizes: Optional[Tuple[int, ...]] = option(None, BATCH_SIZES, _BATCH_HELP)
    infer_batch_size: Optional[int] = option(None, BATCH_SIZE, "batch size of the dataset inference, at most the "
                                             "images run (default: the first batch size)")
    height: Optional[int] = option(None, IMAGE_SIDE, "network input height (default 800; "
                                   f"{EMBEDDED_INPUT_HW[0]} for the embedded default)")
    width: Optional[int] = option(None, IMAGE_SIDE, "network input width (default 1216; "
                                  f"{EMBEDDED_INPUT_HW[1]} for the embedded default)")
    num_images: Optional[int] = option(None, COUNT, "generated images when no COCO root is given (default "
                                       f"{EMBEDDED_NUM_IMAGES})")
    limit: Optional[int] = option(None, COUNT, "only the first N images by id (a labelled partial run, never the "
                                  "recipe's claim)")
    score_threshold: Optional[float] = option(None, PROBABILITY, "drop detections scoring below this (in [0, 1]) "
                                              "before evaluation (default: the model's 0.05)")
    scorer: str = option(DEFAULT_SCORER, Choice(SCORERS), "the COCO scorer")
    perf_loops: Optional[int] = option(None, COUNT, "at least this many timed pure-inference runs per batch size "
                                       f"(default {DEFAULT_PERF_LOOPS})")
    perf_min_seconds: Optional[float] = option(None, DURATION, "and timed runs for at least this many seconds "
                                               f"(default {DEFAULT_PERF_MIN_SECONDS:g}; 0: no minimum duration)")
    perf_warmup: Optional[int] = option(None, NON_NEGATIVE_INT, f"untimed warm-up runs (default {DEFAULT_PERF_WARMUP}; "
                                        "0: none)")
    parity_images: Optional[int] = option(None, COUNT, f"images of the parity batch (default {DEFAULT_PARITY_IMAGES})")
    soc_version: Optional[str] = option(None, TEXT, "atc --soc_version (default: from `npu-smi info`)")
    precision_mode: str = option(DEFAULT_PRECISION_MODE, Choice(PRECISION_MODES), "atc --precision_mode")
    extra_perf: Tuple[str, ...] = option((), PathList(), "perf records measured elsewhere (fsaf-repro perf --out), "
                                         "shown and gated beside this host's; repeatable", path=INPUT_FILE,
                                         what="perf records file", repeatable=True,
                                         metavar="PERF_JSON")
    threads: Optional[int] = option(None, THREADS_OR_RUNTIME, "intra-op threads of the CPU backends (torch, ONNX "
                                    "Runtime) in the data set run and the parity batch; default: all cores but one "
                                    "(the image loader's); 0: the runtimes' own")
    perf_threads: Optional[int] = option(None, THREADS_OR_RUNTIME, "intra-op threads of the CPU backends in the "
                                         "pure-inference timing; default: all cores; 0: the runtimes' own")
    seed: int = option(EMBEDDED_SEED, SEED, "seed of generated weights and data")
    fit_steps: Optional[int] = option(None, NON_NEGATIVE_INT, "without --checkpoint: fit the weights on generated "
                                      f"shapes for this many steps (default {DEFAULT_FIT_STEPS}, a few minutes on 2 "
                                      "cores; reused afterwards); 0: seeded weights, no fit")
    trust_checkpoint: bool = option(False, BOOLEAN, "load the checkpoint with the full unpickler (only for files you "
                                    "trust)", switch=True)
    progress: bool = option(False, BOOLEAN, "progress bars during inference", switch=True)
    # keep going by default: a run is minutes to hours of independent per-backend stages, and the house
    # rule is that one failing backend never loses the others' results; the exit status is non-zero
    # either way, so a script or CI still sees the failure
    keep_going: bool = option(True, BOOLEAN, "after a stage fails, run every stage that does not depend on it and "
                              "render the report with the failure (the default; --fail-fast: stop at the first "
                              "failure, as make does, with no report); the exit status is 1 either way",
                              switch=True, negation="--fail-fast")
    dry_run: bool = option(False, BOOLEAN, "print the plan (each stage, its key, whether it would run or be reused "
                           "and why) and run nothing", switch=True)
    echo: bool = option(True, BOOLEAN, "print the run's log lines", cli=False)
    environ: Optional[Mapping[str, str]] = option(None, OfType(dict, "a mapping of environment variables"),
                                                  "the environment read for the inputs (default: os.environ)",
                                                  cli=False)
    npu_present: Optional[bool] = option(None, BOOLEAN, "whether an NPU is here, for the default batch sizes "
                                         "(default: probed)", cli=False)

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None:
                object.__setattr__(self, item.name, _frozen(declaration(item.name).kind.check(value,
                                                                                            spell(item.name))))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ReproduceOptions":
        """The record of `values` (option name -> value); an unknown name is refused naming the known ones."""
        unknown = sorted(set(values) - set(option_names()))
        if unknown:
            raise OptionError("reproduce: unknown option(s) {}; known options: {}".format(
                ", ".join(unknown), ", ".join(option_names())))
        return cls(**values)


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


def option_names() -> Tuple[str, ...]:
    return tuple(item.name for item in fields(ReproduceOptions))


def declaration(name: str) -> OptionSpec:
    return next(item for item in fields(ReproduceOptions) if item.name == name).metadata["option"]


def declarations() -> Tuple[Tuple[str, Any, OptionSpec], ...]:
    """(name, default, declaration) of every option, in declaration order."""
    return tuple((item.name, item.default, item.metadata["option"]) for item in fields(ReproduceOptions))
