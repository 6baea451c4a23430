"""Plan a `reproduce` run: the stages of a run, each declared from its RunConfig and what the host
offers (plan), and the Late values a stage declares that are known only once earlier stages have run.

Every stage declares what it reads (a Stage: parameters, input files, the recipe spec sections, the
earlier stages it consumes, an implementation version); its key is the hash of that declaration
(fsaf_repro.stagebook.stage_key). A step this host cannot run is an entry with its reason. Stage bodies
are module-level `run_<stage>(ctx)` functions in fsaf_repro.stages. Adding a stage: its body there, its
entry in `plan` and its version in fsaf_repro.stagebook.STAGE_VERSIONS.
"""
import copy
import os
import sys
from typing import List

from .backends.base import MODEL_CHECKPOINT, MODEL_OM, ONNX_MODEL_KINDS
from .parity import ParitySide, SideRole
from .reproduce_config import REFERENCE_BACKEND, HostProbes, RunConfig
from .jsonio import canonical_sha256
from .stagebook import Late, Stage, check_edges, derived_upstream, skipped_step, under_spec_sections
from .stages import (GENERATED_IMAGE_DIR, backend_class, run_checkpoint, run_convert, run_data, run_dataset,
                     run_evaluate, run_export, run_fit, run_infer, run_parity, run_perf, run_report, run_results)

FLAVOURS = ("onnx-nms", "raw", "ascend-nms")
# The fit's training set has its own seed (the run's seed + this), never the evaluated set's.
FIT_DATA_SEED_OFFSET = 1000

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
        self.failures = {}  # stage name -> StageFailure: failed, or skipped because an upstream stage failed
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
    check_edges(stages, STAGE_ORDER)  # the declared upstream edges cover those the inputs and outputs imply
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
    """(ParitySide, model) of the parity batch, the torch reference first; each side's role says what it is."""
    sides = []
    if REFERENCE_BACKEND not in probes.unavailable:
        sides.append((ParitySide(SideRole.REFERENCE, "torch", REFERENCE_BACKEND), config.checkpoint_path))
    onnx = _onnx_paths(config)
    sides.extend((ParitySide(SideRole.ONNX_NMS, f"{name} (onnx-nms)", name), onnx["onnx-nms"]) for name in models
                 if backend_class(name).model_kind == "onnx-nms")
    if "onnxruntime" in models:
        sides.append((ParitySide(SideRole.RAW_HOST_NMS, "onnxruntime (raw + host NMS)", "onnxruntime"), onnx["raw"]))
    sides.extend([(ParitySide(SideRole.OM, f"{name} (om, ascend-nms)", name), models[name])
                  for name in models if backend_class(name).model_kind == MODEL_OM][:1])
    # other checkpoint backends (the fp16 stand-in): the checkpoint, labelled as what runs it
    sides.extend((ParitySide(SideRole.CHECKPOINT, f"{name} (checkpoint)", name), config.checkpoint_path)
                 for name in models if name != REFERENCE_BACKEND and backend_class(name).model_kind == MODEL_CHECKPOINT)
    return sides


def _parity_entry(config, probes, models):
    sides = _parity_sides(config, probes, models)
    if len(sides) < 2 or sides[0][0].role is not SideRole.REFERENCE:
        return skipped_step("parity", "needs the torch reference and at least one exported-model backend")
    image_ids = Late(_parity_image_ids, config.parity_images)
    inputs = dict(("model:" + side.label, model) for side, model in sides)
    inputs["images"] = Late(_parity_image_files, config.parity_images)
    return Stage("parity", run_parity,
                 params={"sides": [side.as_record() for side, _ in sides], "image_ids": image_ids,
                         "canvas": config.canvas, "threads": config.threads, "om_precision": config.precision_mode},
                 inputs=inputs, outputs={"parity": config.path("parity.json")}, spec=("parity", "model", "input"),
                 upstream=("data",) + tuple(_model_stage(config, side.backend) for side, _ in sides),
                 options={"trusted": config.trusted, "image_set": Late(late_image_set)})


def _parity_image_ids(state, parity_images):
    return late_image_ids(state, min(parity_images, len(state.image_set())))


def _parity_image_files(state, parity_images):
    return late_image_files(state, min(parity_images, len(state.image_set())))


def _report_stage(config, probes, stages, models, failures=None):
    """report.md from every stage of the run that finished; its inputs (report_inputs.json) and perf.json
    are its outputs. `failures` (stage name -> StageFailure) are the stages that did not finish: the
    report is declared over the others and lists each failure with its reason and log (the stage's
    `redeclare` does this when a failure happens)."""
    from . import report as report_module
    failures = failures or {}
    stages = [s for s in stages if s.name != "report"]  # the stages before it (redeclare sees the whole plan)
    # what no report can do without: the checkpoint and annotation files, the data stage's image set
    fixed = Stage("report", None, inputs={"annotation": config.annotation_file, "checkpoint": config.checkpoint_path})
    lost = sorted((set(derived_upstream(fixed, stages)) | {"data"}) & set(failures))
    if lost:
        return skipped_step("report", "needs {}, which did not finish".format(", ".join(lost)))
    runs = [s for s in stages if s.skipped is None and s.name not in failures]
    by_name = dict((s.name, s) for s in runs)
    finished = set(by_name)
    skipped = dict((s.label, s.skipped) for s in stages if s.skipped is not None)
    # a backend is reported when all of its data set stages finished
    reported = [n for n in models if all(f"{base}:{n}" in finished for base in ("infer", "results", "evaluate"))]
    inputs = {"annotation": config.annotation_file, "checkpoint": config.checkpoint_path,
              "images": Late(late_image_files, report_module.DETECTION_IMAGES)}
    for name in reported:
        inputs["results:" + name] = by_name["results:" + name].outputs["results"]
        inputs["metrics:" + name] = by_name["evaluate:" + name].outputs["metrics"]
    inputs.update((s.name, s.outputs["records"]) for s in runs if s.name.startswith("perf:"))
    inputs.update((f"extra_perf:{i}", path) for i, path in enumerate(config.extra_perf))
    if "parity" in finished:
        inputs["parity"] = by_name["parity"].outputs["parity"]
    params = _report_params(config, probes, models, skipped, failures)
    params.update(dataset_backends=reported, perf_backends=[s.name.partition(":")[2] for s in runs
                                                            if s.name.startswith("perf:")],
                  stage_results=Late(late_results, ["checkpoint", "export", "convert"] +
                                     ["infer:" + n for n in reported]))
    # Every stage of this run that finished feeds the report (its context lists their keys and records).
    report = Stage("report", run_report, params=params, inputs=inputs,
                   outputs={"context": config.path("report_inputs.json"), "perf": config.path("perf.json")},
                   spec=("accuracy", "performance", "coco_classes", "coco_category_ids", "input", "checkpoint"),
                   upstream=tuple(sorted(finished, key=_stage_rank)),
                   options={"run_dir": config.run_dir, "image_set": Late(late_image_set),
                            "image_dir": config.image_dir})
    report.redeclare = lambda lost: _report_stage(config, probes, stages, models, lost)
    return report


def _report_params(config, probes, models, skipped, failures):
    params = {"run_dir": config.run_dir, "embedded": config.embedded, "seeded": config.seeded,
              "generated": config.generated, "canvas": config.canvas, "batch_sizes": list(config.batch_sizes),
              "infer_batch_size": config.infer_batch_size, "score_threshold": config.score_threshold,
              "scorer": config.scorer, "threads": config.threads, "perf_threads": config.perf_threads,
              "perf_loops": config.perf_loops, "perf_warmup": config.perf_warmup,
              "perf_min_seconds": config.perf_min_seconds, "soc_version": probes.soc_version,
              "backends": Late(late_backend_rows, _backend_rows(config, probes, models, skipped, failures)),
              "skipped_steps": dict((k, v) for k, v in skipped.items() if k in ("convert", "parity")),
              "extra_perf": list(config.extra_perf),
              "stages": Late(late_stage_table), "plots": _plots_available()}
    if failures:  # only a run with a failure has the key: a run without one keys as before
        params["failures"] = dict((name, failure.as_record()) for name, failure in sorted(failures.items()))
    return params


def _plots_available():
    from . import report as report_module
    return report_module.plots_availability()[0]


def _backend_rows(config, probes, models, skipped, failures):
    rows = []
    for name in config.backends:
        lost = sorted(stage for stage, failure in failures.items()
                      if stage.partition(":")[2] == name and failure.status == "failed")
        status = "failed" if lost else "ran" if name in models else "skipped"
        reason = f"failed in stage {lost[0]}: {failures[lost[0]].reason}" if lost else skipped.get(name)
        rows.append(dict({"name": name, "status": status, "reason": reason, "model": models.get(name)},
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




# The order the report lists stages in (by kind), checked against each plan's edges (check_edges).
STAGE_ORDER = ("checkpoint", "dataset", "export", "convert", "data", "infer", "results", "evaluate", "perf",
               "parity", "report")


def _stage_rank(name):
    base, _, detail = name.partition(":")
    return (STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER), detail)

