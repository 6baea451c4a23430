"""Configuration and shared artifacts of the recipe's acceptance tests.

Every setting is an option (declared in the root tests/conftest.py, the only place pytest reads
`pytest_addoption` from when run as `pytest -m acceptance` from the repository root) or its environment
variable; the option wins. A claim that needs something absent skips, and its reason names the
variable/option or the tool to provide. Claims that need nothing absent run on any host: they use seeded
weights written in the official checkpoint layout and generated COCO data, and say so in their ids.

Artifacts (exports, oms, results, metrics, perf records) go to FSAF_RUN_DIR when given, else to a
temporary folder. Perf records are written as `*perf*.json` (the CI gates job collects that pattern);
records of generated data never are, so they cannot reach a gate.
"""
import glob
import json
import os
import shutil

import pytest

from fsaf_repro.spec import load_recipe_spec, performance_reference

from tests.conftest import ACCEPTANCE_OPTIONS

ENV_OF = dict((option, env) for option, env, _ in ACCEPTANCE_OPTIONS)
OM_BACKENDS = ("aclruntime", "ais_bench", "benchmark")
ORT_BACKEND_OF_PROVIDER = {
    "CPUExecutionProvider": "onnxruntime",
    "CUDAExecutionProvider": "onnxruntime-cuda",
    "TensorrtExecutionProvider": "onnxruntime-tensorrt",
    "CANNExecutionProvider": "onnxruntime-cann",
}
CANN_SET_ENV = load_recipe_spec()["containers"]["cann_set_env"]


def provide(option, what=""):
    """The wording every skip uses: which variable (or option) to set, and to what."""
    return "set {} (or pass {}){}".format(ENV_OF[option], option, " " + what if what else "")


class AcceptanceSettings:
    """The resolved settings: option value, else environment variable, else None."""

    def __init__(self, config):
        raw = {}
        for option, env, _ in ACCEPTANCE_OPTIONS:
            value = config.getoption(option)
            if value in (None, ""):
                value = os.environ.get(env) or None
            raw[option] = value
        self.raw = raw
        self.checkpoint = raw["--checkpoint"]
        self.coco_root = raw["--coco-root"]
        self.device = raw["--device"]
        self.device_id = int(raw["--device-id"] or 0)
        self.ort_provider = raw["--ort-provider"]
        self.soc_version = raw["--soc-version"]
        self.run_dir = raw["--run-dir"]
        self.reference_perf = raw["--reference-perf"]
        self.mmdet_config = raw["--mmdet-config"]
        self.batch_sizes = self._batch_sizes(raw["--batch-sizes"])
        self.smoke_images = self._smoke_images(raw["--smoke-images"])
        self.backend = self._backend(raw["--backend"])

    @staticmethod
    def _batch_sizes(text):
        if not text:
            return [int(b) for b in performance_reference()["batch_sizes"]]
        try:
            sizes = [int(part) for part in str(text).split(",") if part.strip()]
        except ValueError:
            sizes = []
        if not sizes or min(sizes) < 1:
            raise pytest.UsageError("{} must list positive integers separated by commas, got {!r}".format(
                ENV_OF["--batch-sizes"], text))
        return sizes

    @staticmethod
    def _smoke_images(text):
        if not text:
            return None
        try:
            count = int(text)
        except ValueError:
            count = 0
        if count < 1:
            raise pytest.UsageError("{} must be a number of images, got {!r}".format(ENV_OF["--smoke-images"], text))
        return count

    def _backend(self, name):
        if not name:
            name = "aclruntime" if (self.device or "").startswith("310") else "onnxruntime"
        if name == "onnxruntime" and self.ort_provider:
            if self.ort_provider not in ORT_BACKEND_OF_PROVIDER:
                raise pytest.UsageError("{}={} is not one of {}".format(
                    ENV_OF["--ort-provider"], self.ort_provider, ", ".join(sorted(ORT_BACKEND_OF_PROVIDER))))
            name = ORT_BACKEND_OF_PROVIDER[self.ort_provider]
        return name

    def backend_options(self, name=None):
        """Options of backend `name` (default: the configured one) for this host's device id."""
        name = name or self.backend
        if name in OM_BACKENDS or name == "onnxruntime-cann":
            return {"device_id": self.device_id}
        if name in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
            return {"provider_options": {"device_id": self.device_id}}
        return {}

    def precision(self):
        return "fp16" if self.backend in OM_BACKENDS else "fp32"


def _settings_from(config):
    if not hasattr(config, "_fsaf_acceptance_settings"):
        config._fsaf_acceptance_settings = AcceptanceSettings(config)
    return config._fsaf_acceptance_settings


def pytest_generate_tests(metafunc):
    settings = _settings_from(metafunc.config)
    if "checkpoint_kind" in metafunc.fixturenames:
        # The claims about the checkpoint run twice: on the official file (skipped without it) and on
        # seeded weights written in the official layout (runs anywhere, labelled "generated").
        metafunc.parametrize("checkpoint_kind", ["official", "generated"])
    if "model_kind" in metafunc.fixturenames:
        # Claims about compiled/run models: the official weights when given, else generated ones.
        metafunc.parametrize("model_kind", ["official" if settings.checkpoint else "generated"])
    if "batch_size" in metafunc.fixturenames:
        metafunc.parametrize("batch_size", settings.batch_sizes, ids=[f"bs{b}" for b in settings.batch_sizes])


# --- settings, folders, checkpoints ---------------------------------------------------------------


@pytest.fixture(scope="session")
def settings(request):
    return _settings_from(request.config)


@pytest.fixture(scope="session")
def run_dir(settings, tmp_path_factory):
    """Where this run's artifacts go: FSAF_RUN_DIR, else a temporary folder."""
    if settings.run_dir:
        path = os.path.abspath(settings.run_dir)
        if not os.path.isdir(path):
            os.makedirs(path)
        return path
    return str(tmp_path_factory.mktemp("acceptance_run"))


WHAT_TO_PROVIDE = {
    "--checkpoint": "the official " + load_recipe_spec()["checkpoint"]["file_name"],
    "--coco-root": "a COCO folder holding val2017/ and annotations/instances_val2017.json",
    "--smoke-images": "N >= {} for the labelled smoke accuracy run".format(
        load_recipe_spec()["accuracy"]["smoke"]["num_images"]),
    "--device": "the device label of this host's records (310, 310P, 310P_aoe, T4)",
}


@pytest.fixture(scope="session")
def require(settings):
    """require(option, ...): skip naming every one of the listed settings that is missing."""
    def check(*options):
        missing = [o for o in options if not settings.raw[o]]
        if missing:
            pytest.skip("; ".join(provide(o, "to " + WHAT_TO_PROVIDE[o]) for o in missing))
    return check


def official_checkpoint_path(settings):
    name = load_recipe_spec()["checkpoint"]["file_name"]
    if not settings.checkpoint:
        pytest.skip(provide("--checkpoint", f"to the official {name} (mmdetection model zoo, configs/fsaf)"))
    if not os.path.isfile(settings.checkpoint):
        pytest.fail("{}={} is not a file: point it at {}".format(ENV_OF["--checkpoint"], settings.checkpoint, name))
    return os.path.abspath(settings.checkpoint)


@pytest.fixture(scope="session")
def official_checkpoint(settings):
    return official_checkpoint_path(settings)


@pytest.fixture(scope="session")
def checkpoint_of(settings, seeded_checkpoint, request):
    """checkpoint_of(kind) -> path: "official" (skips without FSAF_CHECKPOINT), "generated" (seeded weights
    in the official layout, the root conftest's seeded_checkpoint) or "fitted" (a short fit on generated
    shapes, the root conftest's fitted_checkpoint, made only when asked for)."""
    def get(kind):
        if kind == "official":
            return official_checkpoint_path(settings)
        if kind == "generated":
            return seeded_checkpoint
        if kind == "fitted":
            return request.getfixturevalue("fitted_checkpoint")
        raise ValueError(kind)
    return get


# --- ONNX exports and om files, cached per session (into the run directory) ------------------------


@pytest.fixture(scope="session")
def onnx_export(run_dir):
    """onnx_export(checkpoint, kind, flavour, height, width, batch_size) -> (.onnx path, sidecar)."""
    from fsaf_repro.export import export_onnx

    made = {}

    def get(checkpoint, kind, flavour, height, width, batch_size=None):
        key = (checkpoint, flavour, height, width, batch_size)
        if key not in made:
            directory = os.path.join(run_dir, "onnx")
            path = os.path.join(directory, "fsaf_{}_{}_{}x{}_{}.onnx".format(
                kind, flavour, height, width, f"bs{batch_size}" if batch_size else "dynamic"))
            made[key] = (path, export_onnx(checkpoint, path, flavour=flavour, height=height, width=width,
                                           batch_size=batch_size))
        return made[key]

    return get


def om_tool_for(settings):
    """("aoe", ...) on the recipe's tuned 310P column, else ("atc", ...)."""
    return "aoe" if settings.device == "310P_aoe" else "atc"


@pytest.fixture(scope="session")
def om_for(settings, run_dir, onnx_export, checkpoint_of):
    """om_for(kind, batch_size, tool=None) -> om sidecar dict (with "path"): the 800x1216 ascend-nms export
    converted for one batch size by atc (recipe section 3.2) or by aoe operator tuning (section 7.1);
    default tool: aoe when FSAF_DEVICE=310P_aoe, else atc."""
    from fsaf_repro.convert import ConversionJob, convert_one, detect_soc_version
    from fsaf_repro.errors import ToolError

    made = {}

    def get(kind, batch_size, tool=None):
        tool = tool or om_tool_for(settings)
        if shutil.which(tool) is None:
            pytest.skip(f"put CANN's {tool} on PATH (source {CANN_SET_ENV})")
        key = (kind, batch_size, tool)
        if key in made:
            return made[key]
        soc_version = settings.soc_version
        if soc_version is None and tool == "atc":
            if shutil.which("npu-smi") is None:
                pytest.skip("{}, e.g. Ascend310P3, or put the driver's npu-smi on PATH to read it".format(
                    provide("--soc-version")))
            try:
                soc_version = detect_soc_version(log_path=os.path.join(run_dir, "npu-smi.log"))
            except ToolError as exc:
                pytest.fail(str(exc))
        inp = load_recipe_spec()["input"]
        onnx_path, _ = onnx_export(checkpoint_of(kind), kind, "ascend-nms", inp["height"], inp["width"], None)
        out_dir = os.path.join(run_dir, "om")
        sidecar = convert_one(onnx_path, out_dir, ConversionJob(tool, batch_size, soc_version),
                              name_prefix=f"fsaf_{kind}_{tool}_bs{batch_size}")
        sidecar = dict(sidecar, path=os.path.join(out_dir, sidecar["om"]))
        made[key] = sidecar
        return sidecar

    return get


# --- backends --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def configured_backend(settings):
    """The backend named by FSAF_BACKEND (default: aclruntime for a 310* device, else onnxruntime);
    skips with the runtime's own reason when it cannot run here."""
    from fsaf_repro.backends import backend_availability

    def check():
        availability = backend_availability(settings.backend)
        if not availability.ok:
            pytest.skip("backend {} unavailable: {} ({} to choose another backend)".format(
                settings.backend, availability.reason, provide("--backend")))
        return settings.backend

    return check


@pytest.fixture(scope="session")
def model_for_backend(settings, onnx_export, om_for, checkpoint_of):
    """model_for_backend(kind, batch_size) -> (model path, input dtype) for the configured backend."""
    def get(kind, batch_size):
        inp = load_recipe_spec()["input"]
        if settings.backend in OM_BACKENDS:
            return om_for(kind, batch_size)["path"]
        if settings.backend.startswith("onnxruntime"):
            return onnx_export(checkpoint_of(kind), kind, "onnx-nms", inp["height"], inp["width"], batch_size)[0]
        if settings.backend == "torch":
            return checkpoint_of(kind)
        pytest.skip("backend {} has no model kind known to the acceptance tests; {} to one of {}".format(
            settings.backend, provide("--backend"), ", ".join(OM_BACKENDS + ("onnxruntime", "torch"))))

    return get


# --- COCO val2017 ------------------------------------------------------------------------------------


def val2017_paths(root):
    spec = load_recipe_spec()["acceptance"]["val2017"]
    return os.path.join(root, spec["annotation_file"]), os.path.join(root, spec["image_dir"])


def verified_full_val2017(root):
    """The CocoImageSet of COCO val2017 under `root`, or a failure naming what is missing: the annotation
    file must list the spec's 5000 images and every one of them must be on disk, so that a partial set
    can never stand in for the recipe's."""
    from fsaf_repro.data import CocoImageSet

    expected = load_recipe_spec()["acceptance"]["val2017"]["num_images"]
    annotation_file, image_dir = val2017_paths(root)
    problems = []
    if not os.path.isfile(annotation_file):
        problems.append(f"no annotation file {annotation_file}")
    if not os.path.isdir(image_dir):
        problems.append(f"no image folder {image_dir}")
    if problems:
        return None, problems
    image_set = CocoImageSet(annotation_file, image_dir)
    if image_set.total_images != expected:
        problems.append(f"{annotation_file} lists {image_set.total_images} images, val2017 has {expected}")
    missing = [m.path for m in image_set.metas if not os.path.isfile(m.path)]
    if missing:
        problems.append(f"{len(missing)} of the listed images are not in {image_dir} "
                        f"(e.g. {os.path.basename(missing[0])})")
    return image_set, problems


@pytest.fixture(scope="session")
def coco_root(settings):
    if not settings.coco_root:
        pytest.skip(provide("--coco-root", "to a COCO folder holding val2017/ (5000 images) and "
                                           "annotations/instances_val2017.json"))
    return os.path.abspath(settings.coco_root)


@pytest.fixture(scope="session")
def full_val2017(coco_root):
    image_set, problems = verified_full_val2017(coco_root)
    if problems:
        pytest.fail("{}={} is not the full COCO val2017: {}".format(
            ENV_OF["--coco-root"], coco_root, "; ".join(problems)))
    return image_set


# --- dataset runs and their records -------------------------------------------------------------------


def device_records(summary_records, settings, backend_name, batch_size):
    """The runner's dataset records relabelled with this host's device (and the 310 per-card factor)."""
    from fsaf_repro.perf import Coverage, RecordLabel, default_chips, make_record

    device = settings.device or "unlabelled"
    chips = default_chips(device)
    records = []
    for record in summary_records:
        records.append(make_record(
            RecordLabel(device, backend_name, settings.precision(), batch_size),
            record["fps_measured"] * chips, record["mode"],
            record["source"], latencies_ms=record.get("latencies_ms"), chips=chips,
            fps_measured=record["fps_measured"], coverage=Coverage(record.get("images"), record.get("seconds")),
            note=f"FSAF_DEVICE={device}"))
    return records


@pytest.fixture(scope="session")
def dataset_run(settings, run_dir, configured_backend, model_for_backend):
    """dataset_run(image_set, kind, batch_size, label) -> dict(summary, metrics, records, paths).

    Runs the configured backend over `image_set` with fsaf_repro.runner, scores the results with
    fsaf_repro.evaluate and writes results, metrics (with the annotation sha256 and image count) and,
    for full-dataset runs only (label "val2017"), the perf records as `perf_<device>_<backend>_bs<N>.json`.
    """
    from fsaf_repro.backends import create_backend
    from fsaf_repro.evaluate import evaluate_results, metrics_record
    from fsaf_repro.perf import write_records
    from fsaf_repro.postprocess import write_results_json
    from fsaf_repro.runner import infer_dataset

    done = {}

    def run(image_set, kind, batch_size, label):
        key = (label, kind, batch_size)
        if key in done:
            return done[key]
        backend_name = configured_backend()
        model = model_for_backend(kind, batch_size)
        tag = f"{label}_{kind}_{backend_name}_bs{batch_size}"
        results_path = os.path.join(run_dir, "results", tag + ".json")
        if not os.path.isdir(os.path.dirname(results_path)):
            os.makedirs(os.path.dirname(results_path))
        options = settings.backend_options()
        with create_backend(backend_name, **options) as backend:
            backend.load(model)
            summary = infer_dataset(image_set, backend, results_path, batch_size=batch_size, progress=False,
                                    backend_name=backend_name, backend_options=options, model_path=model)
        metrics = evaluate_results(image_set.annotation_file, results_path, image_ids=image_set.image_ids)
        record = metrics_record(metrics)
        record.update(label=label, checkpoint=kind, backend=backend_name, batch_size=batch_size,
                      device=settings.device, model=model,
                      claim=("the recipe's accuracy claim (full val2017)" if label == "val2017"
                             else f"labelled {label} run: not the recipe's claim"))
        metrics_path = os.path.join(run_dir, "metrics", tag + ".json")
        write_results_json(metrics_path, record)
        records = device_records(summary["records"], settings, backend_name, batch_size)
        perf_path = None
        if label == "val2017":
            perf_path = os.path.join(run_dir, "perf_{}_{}_bs{}.json".format(
                settings.device or "unlabelled", backend_name, batch_size))
            write_records(perf_path, records)
        done[key] = {"summary": summary, "metrics": record, "records": records, "results": results_path,
                     "metrics_path": metrics_path, "perf_path": perf_path}
        return done[key]

    return run


def perf_records_in(folder):
    """Every perf record under `folder` (files named *perf*.json, as the CI gates job collects them)."""
    from fsaf_repro.perf import load_records

    records = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*perf*.json"), recursive=True)):
        records.extend(load_records(path))
    return records


def write_json(path, payload):
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
