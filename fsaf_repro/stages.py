"""The bodies of reproduce's stages: each `run_<stage>(ctx)` is given only its StageContext (its
declared params, inputs, outputs, spec sections and options, the run's log) and returns (result dict,
output paths). Which stages a run has and what each declares is fsaf_repro.reproduce's plan, which
imports the bodies from here; this module does not import reproduce. Adding a stage: its body here,
its entry in reproduce.plan and its version in fsaf_repro.stagebook.STAGE_VERSIONS.
"""
import os

from .backends.base import MODEL_CHECKPOINT, MODEL_OM
from .errors import FsafReproError, JournalMismatch, ResultsError
from .fileio import atomic_write_json
from .jsonio import array, load_json, mapping, obj, one_of, text_value
from .parity import SideRole

# parity.json as run_parity writes it, as far as the report stage reads it: each pair names its backends
ROLE = one_of(*(role.value for role in SideRole))
PARITY_PAIRS = obj({"pairs": array(obj({"reference": text_value(), "other": text_value(),
                                          "reference_role": ROLE, "other_role": ROLE,
                                          "reference_backend": text_value(), "other_backend": text_value()}))})

# the data stage's image_dir param for a generated set: keyed by content, not by where the run is
GENERATED_IMAGE_DIR = "<generated>"


def backend_class(name):
    """The class of backend `name`, asked for its facts (model_kind, takes_threads, device_label,
    precision); the contract's defaults when its module fails to import (then probe_host reports the
    backend unavailable)."""
    from .backends import Backend, find_backend_class
    return find_backend_class(name) or Backend


def _load_extra_perf(paths):
    """Perf records given by --extra-perf (measured elsewhere), each marked with the file it came from."""
    from .perf import load_records
    records = []
    for path in paths or ():
        loaded = load_records(path)
        for record in loaded:
            record["source"] = record.get("source", "") + f" (from {path})"
        records.extend(loaded)
    return records


# ----------------------------------------------------------------------------------------------
# Helpers of the bodies


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
        raise FsafReproError(f"{path}: the {flavour} graph lacks its {wanted} node")
    if not wanted and set(ops) & {"NonMaxSuppression", "BatchMultiClassNMS"}:
        raise FsafReproError(f"{path}: the raw graph contains an NMS node")
    return {"flavour": flavour, "inputs": graph_inputs, "outputs": graph_outputs, "ops": len(ops),
            "nms_node": [op for op in ops if op in ("NonMaxSuppression", "BatchMultiClassNMS")],
            "checker": "onnx.checker passed (at export)" if flavour != "ascend-nms"
            else "onnx.checker not applicable (custom BatchMultiClassNMS node); structure checked",
            "opset": sidecar.get("opset"), "onnx_version": onnx.__version__}


def _load_backend(name, model_path, trusted=False, threads=None):
    from .backends import create_backend
    cls = backend_class(name)
    options = {"trusted": trusted} if cls.model_kind == MODEL_CHECKPOINT and trusted else {}
    if threads and cls.takes_threads:
        options["threads"] = int(threads)
    backend = create_backend(name, **options)
    backend.load(model_path)
    return backend, options


# ----------------------------------------------------------------------------------------------
# Stage bodies: module-level, each given only its StageContext


def run_checkpoint(ctx):
    from .checkpoint import write_seeded_checkpoint
    path = ctx.outputs["checkpoint"]
    write_seeded_checkpoint(path, ctx.params["seed"])
    return {"path": path, "seeded": True, "seed": ctx.params["seed"]}, [path]


def run_fit(ctx):
    """Weights fitted on generated shapes (fsaf_repro.train.fit_generated) in the official layout."""
    from .fit_progress import FitReporting
    from .train import fit_generated
    p = ctx.params
    ctx.log(f"fit: {p['fit']['steps']} steps on {p['fit']['train_images']} generated images (seed {p['data_seed']}), "
            f"{p['threads']} thread(s); the weights are trained on generated shapes, not COCO")
    # ctx.log gets a line every PROGRESS_INTERVAL_S
    summary = fit_generated(ctx.outputs["checkpoint"], seed=p["seed"], data_seed=p["data_seed"], threads=p["threads"],
                            reporting=FitReporting(bar=ctx.options["progress"], log=ctx.log), **p["fit"])
    record = {"path": ctx.outputs["checkpoint"], "seeded": True, "seed": p["seed"], "fitted": True,
              "fit": {k: summary[k] for k in ("params", "data_seed", "features_s", "train_s", "steps_per_s",
                                              "wall_s", "threads", "final_loss")}}
    return record, [ctx.outputs["checkpoint"]]


def run_dataset(ctx):
    from .synthetic import make_synthetic_coco
    ann, img_dir = make_synthetic_coco(ctx.outputs["root"], num_images=ctx.params["num_images"],
                                       seed=ctx.params["seed"], style=ctx.params["style"])
    files = [os.path.join(img_dir, name) for name in sorted(os.listdir(img_dir))]
    return {"annotation_file": ann, "image_dir": img_dir, "generated": True}, [ann] + files


def run_export(ctx):
    from .export import export_onnx
    checks = {}
    outputs = []
    canvas_h, canvas_w = ctx.params["canvas"]
    run_dir = ctx.options["run_dir"]
    for flavour in ctx.params["flavours"]:
        path = ctx.outputs[flavour]
        sidecar = export_onnx(ctx.inputs["checkpoint"], path, flavour=flavour, height=canvas_h, width=canvas_w,
                              batch_size=None, opset=ctx.spec["model"]["opset"], trusted=ctx.options["trusted"])
        checks[flavour] = _export_check(path, sidecar, flavour)
        checks[flavour]["file"] = os.path.relpath(path, run_dir)
        checks[flavour]["export_seconds"] = sidecar["export_seconds"]
        ctx.log(f"exported {os.path.relpath(path, run_dir)} ({flavour} flavour, {canvas_h}x{canvas_w}, dynamic "
                "batch): checked")
        outputs.extend([path, path + ".json"])
    return {"flavours": checks}, outputs


def run_convert(ctx):
    from .convert import convert_batch_sizes
    canvas_h, canvas_w = ctx.params["canvas"]
    om_dir, run_dir = ctx.outputs["om_dir"], ctx.options["run_dir"]
    built = convert_batch_sizes(ctx.inputs["onnx"], om_dir, ctx.params["batch_sizes"],
                                soc_version=ctx.params["soc_version"], precision_mode=ctx.params["precision_mode"],
                                canvas=(canvas_h, canvas_w))
    outputs, oms = [], {}
    for bs, sidecar in sorted(built.items()):
        om = os.path.join(om_dir, sidecar["om"])
        oms[str(bs)] = os.path.relpath(om, run_dir)
        outputs.extend([om, om + ".json", os.path.join(om_dir, sidecar["log"])])
    return {"soc_version": ctx.params["soc_version"], "oms": oms}, outputs


def run_data(ctx):
    image_set, path = ctx.options["image_set"], ctx.outputs["manifest"]
    record = {"annotation_file": ctx.inputs["annotation"], "annotation_sha256": image_set.annotation_sha256,
              "image_dir": ctx.options["image_dir"], "num_images": len(image_set),
              "total_images": image_set.total_images, "canvas": ctx.params["canvas"],
              "generated": ctx.params["image_dir"] == GENERATED_IMAGE_DIR,
              "images": [{"image_id": m.image_id, "file_name": m.file_name, "orig_w": m.orig_w,
                          "orig_h": m.orig_h, "scale": m.scale} for m in image_set.metas]}
    atomic_write_json(path, record)
    ctx.log("data: {} images ({}), annotations sha256 {}".format(
        len(image_set), "generated" if record["generated"] else ctx.inputs["annotation"],
        image_set.annotation_sha256[:16]))
    return {"num_images": len(image_set), "annotation_sha256": image_set.annotation_sha256}, [path]


def run_infer(ctx):
    from .runner import infer_dataset
    params, infer_path = ctx.params, ctx.outputs["detections"]
    if not os.path.isdir(os.path.dirname(infer_path)):
        os.makedirs(os.path.dirname(infer_path))
    backend, options = _load_backend(params["backend"], ctx.inputs["model"], ctx.options["trusted"],
                                     params["threads"])
    kwargs = dict(batch_size=params["batch_size"], progress=ctx.options["progress"],
                  backend_name=params["backend"], backend_options=options, model_path=ctx.inputs["model"])
    image_set = ctx.options["image_set"]
    try:
        try:
            # a journal left by an interrupted run with these arguments is resumed
            summary = infer_dataset(image_set, backend, infer_path, **kwargs)
        except JournalMismatch as exc:
            # Only a journal of other arguments is discarded; a damaged journal of these
            # arguments is an error the user sees (its finished batches are not thrown away).
            ctx.log("infer:{}: discarding the journal of an interrupted run with other arguments ({})".format(
                params["backend"], exc))
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


def run_results(ctx):
    from .postprocess import read_results_json, write_results_json
    threshold, path = ctx.params["score_threshold"], ctx.outputs["results"]
    results = [r for r in read_results_json(ctx.inputs["infer"]) if r["score"] >= threshold]
    write_results_json(path, results)
    return {"detections": len(results)}, [path]


def run_evaluate(ctx):
    from .evaluate import evaluate_results, metrics_record
    path = ctx.outputs["metrics"]
    # The detector's box branch ends in a ReLU, so a box of zero width or height is a legal output of
    # the model (all four distances 0 along an axis). It cannot match anything: mmdetection's scoring
    # counts it as a false positive, evaluate refuses it by default. Here the run's own detections are
    # scored, so such boxes are dropped and counted in the metrics record (degenerate_dropped) and the
    # log (a negative size cannot come out of the decode: distances >= 0, clipped in order).
    record = metrics_record(evaluate_results(ctx.inputs["annotation"], ctx.inputs["results"],
                                             scorer=ctx.params["scorer"],
                                             image_ids=ctx.options["image_set"].image_ids,
                                             drop_degenerate=True))
    atomic_write_json(path, record)
    dropped = record.get("degenerate_dropped") or 0
    ctx.log("{}: AP@[.50:.95] = {:.3f} over {} images{}".format(
        ctx.params["backend"], record["stats"][0], record["num_images"],
        f"; {dropped} zero-area box(es) dropped, not scored" if dropped else ""))
    return {"ap": record["stats"][0]}, [path]


def run_perf(ctx):
    from .perf import fixed_input, measure_pure_inference, write_records
    params, perf_path = ctx.params, ctx.outputs["records"]
    if not os.path.isdir(os.path.dirname(perf_path)):
        os.makedirs(os.path.dirname(perf_path))
    name, perf_threads, (height, width) = params["backend"], params["threads"], params["canvas"]
    reduced = (height, width) != (ctx.spec["input"]["height"], ctx.spec["input"]["width"])
    records = []
    cls = backend_class(name)
    for bs in params["batch_sizes"]:
        # an om has a static batch size: one om per batch size
        model = ctx.inputs[f"om_bs{bs}"] if cls.model_kind == MODEL_OM else ctx.inputs["model"]
        backend, _ = _load_backend(name, model, ctx.options["trusted"], perf_threads)
        # the count that really ran: torch 1.8.0 may keep a lower one (torch_threads)
        ran_threads = getattr(backend, "intra_op_threads", None) or perf_threads
        try:
            record = measure_pure_inference(backend, fixed_input(bs, height, width), params["loops"],
                                            params["warmup"], params["device"], params["precision"], name,
                                            min_seconds=params["min_seconds"])
        finally:
            backend.close()
        record["note"] = "input {}x{}{}{}".format(
            height, width, " (reduced: not the recipe's 800x1216)" if reduced else "",
            f"; {ran_threads} intra-op thread(s)" if perf_threads and cls.takes_threads else "")
        records.append(record)
        ctx.log("perf: {} bs{} {:.3f} fps, {} {:.3f}-{:.3f} (pure inference, {} timed runs in {:.1f} s)".format(
            name, bs, record["fps"], record["fps_interval"]["kind"], record["fps_interval"]["low"],
            record["fps_interval"]["high"], record["samples"], record["seconds"]))
    write_records(perf_path, records)
    return {"batch_sizes": params["batch_sizes"]}, [perf_path]


def run_parity(ctx):
    import numpy as np
    from .parity import ParitySide, pairs_wanted
    image_set = ctx.options["image_set"]
    batch = np.stack([image_set.load(i)[0] for i in range(len(ctx.params["image_ids"]))])
    sides = [ParitySide.from_record(record) for record in ctx.params["sides"]]
    outputs = {}
    for side in sides:
        backend, _ = _load_backend(side.backend, ctx.inputs["model:" + side.label], ctx.options["trusted"],
                                   ctx.params["threads"])
        try:
            outputs[side.label] = backend.run_padded(batch)
        finally:
            backend.close()
    tol = ctx.spec["parity"]
    # an fp16 side (the om, or its CPU stand-in) is judged by the spec's fp16 tolerances, an fp32 one by the fp32 ones
    pairs = [_parity_pair(outputs, ref, other, tol, backend_class(other.backend).precision(ctx.params["om_precision"]))
             for ref, other in pairs_wanted(sides)]
    payload = {"image_ids": ctx.params["image_ids"], "canvas": ctx.params["canvas"], "tolerances": tol,
               "pairs": pairs}
    atomic_write_json(ctx.outputs["parity"], payload)
    return {"pairs": len(pairs)}, [ctx.outputs["parity"]]


def _parity_pair(outputs, ref, other, tol, precision):
    """The comparison of two ParitySides' outputs, judged by the other side's precision."""
    from .parity import compare_detections, fp16_agreement, within_tolerances
    a, b = outputs[ref.label], outputs[other.label]
    record = compare_detections(a["dets"], a["labels"], b["dets"], b["labels"], tol["match_iou"])
    fp16 = "fp16" in precision
    if fp16:
        # the om acceptance test's rule (test_recipe_parity): enough of the reference's detections found
        # within the fp16 box and score tolerances; the max over all rows is kept in the record, not judged
        agreement = fp16_agreement(a["dets"], a["labels"], b["dets"], b["labels"], tol["fp16_om_box_abs_tol_px"],
                                   tol["fp16_om_score_abs_tol"])
        record["fp16_agreement"] = agreement
        ok = agreement["total"] > 0 and agreement["rate"] >= tol["fp16_om_min_match_rate"]
    else:
        ok = within_tolerances(record)
    # each side's role and backend are fields of the pair: the report and the mAP deltas read them, not the labels
    record.update(reference=ref.label, other=other.label, reference_role=ref.role.value, other_role=other.role.value,
                  reference_backend=ref.backend, other_backend=other.backend, within_tolerance=bool(ok),
                  tolerance="fp16 om" if fp16 else "fp32", precision=precision)
    return record


def run_report(ctx):
    """report_inputs.json (with perf.json and the parity mAP deltas), then report.md from it."""
    from . import report as report_module
    from .perf import write_records
    from .report_context import ReportContext
    perf_records = _collected_perf_records(ctx)
    write_records(ctx.outputs["perf"], perf_records)
    atomic_write_json(ctx.outputs["context"], _report_context(ctx, perf_records).to_json())
    # the report is written from its input file as written (and checked), as a reused report was
    context = ReportContext.from_json(load_json(ctx.outputs["context"], ResultsError, "report inputs", mapping()),
                                      ctx.outputs["context"])
    made = report_module.write_report(ctx.options["run_dir"], context, image_set=ctx.options["image_set"])
    if made["record"].get("plots_skipped"):
        ctx.log("plots skipped: {}".format(made["record"]["plots_skipped"]))
    return made["record"], [ctx.outputs["perf"], ctx.outputs["context"]] + made["outputs"]


def _collected_perf_records(ctx):
    """The records of this run (data set inference, then pure inference per backend) and those given
    by --extra-perf: the contents of perf.json."""
    from .perf import load_records
    records = []
    for name in ctx.params["dataset_backends"]:
        records.extend(ctx.params["stage_results"]["infer:" + name]["records"])
    for name in ctx.params["perf_backends"]:
        records.extend(load_records(ctx.inputs["perf:" + name]))
    return records + _load_extra_perf([ctx.inputs[f"extra_perf:{i}"]
                                       for i in range(len(ctx.params["extra_perf"]))])


def _report_context(ctx, perf_records):
    """The report's typed context (report_context.ReportContext) from this stage's params and inputs."""
    from .report_context import ReportContext
    p, image_set, run_dir = ctx.params, ctx.options["image_set"], ctx.options["run_dir"]
    order = p["dataset_backends"]
    from .evaluate import load_metrics
    from .report_context import BackendRow, CheckpointFacts, DatasetFacts, FailureRow, StageRow
    metrics = dict((name, load_metrics(ctx.inputs["metrics:" + name])) for name in order)
    return ReportContext(
        run_dir=run_dir, embedded=p["embedded"], seeded=p["seeded"], generated=p["generated"],
        checkpoint=CheckpointFacts(path=ctx.inputs["checkpoint"], sha256=ctx.digest(ctx.inputs["checkpoint"]),
                                   seeded=p["seeded"]),
        dataset=DatasetFacts(annotation_file=ctx.inputs["annotation"], annotation_sha256=image_set.annotation_sha256,
                             image_dir=ctx.options["image_dir"], num_images=len(image_set),
                             total_images=image_set.total_images, generated=p["generated"]),
        canvas=tuple(p["canvas"]), batch_sizes=tuple(p["batch_sizes"]), infer_batch_size=p["infer_batch_size"],
        score_threshold=p["score_threshold"], scorer=p["scorer"], threads=p["threads"],
        perf_threads=p["perf_threads"], perf_loops=p["perf_loops"], perf_warmup=p["perf_warmup"],
        backends=tuple(BackendRow(**{k: row.get(k) for k in BackendRow.__dataclass_fields__}) for row in p["backends"]),
        skipped_steps=dict(p["skipped_steps"]),
        export=p["stage_results"].get("export"), convert=p["stage_results"].get("convert"),
        # the fit that made the weights (None: seeded or given weights): the report's first lines name it
        fit=(p["stage_results"].get("checkpoint") or {}).get("fit"),
        soc_version=p["soc_version"], metrics=metrics,
        results=dict((name, os.path.relpath(ctx.inputs["results:" + name], run_dir)) for name in order),
        perf_records=tuple(perf_records),
        parity=_parity_with_map_deltas(ctx.inputs.get("parity"), metrics),
        stages=tuple(StageRow(name=s["name"], key=s["key"], seconds=s["seconds"]) for s in p["stages"]),
        # stages that did not finish: their rows in the report (a run without one has no such param)
        failures=dict((name, FailureRow(**row)) for name, row in (p.get("failures") or {}).items()))


def _parity_with_map_deltas(parity_path, metrics):
    """parity.json with each pair's mAP delta from the evaluation stages (parity.json itself stays as
    the parity stage wrote it): None where a side's model is not the one its backend ran over the data set."""
    if parity_path is None:
        return None
    parity = load_json(parity_path, ResultsError, "parity record", PARITY_PAIRS)
    for pair in parity["pairs"]:
        ref_b, other_b = pair["reference_backend"], pair["other_backend"]
        sides_evaluated = all(SideRole(pair[role]).runs_the_dataset_model for role in ("reference_role", "other_role"))
        if not sides_evaluated or ref_b not in metrics or other_b not in metrics:
            pair["map_delta"] = None
        else:
            pair["map_delta"] = metrics[other_b]["stats"][0] - metrics[ref_b]["stats"][0]
    return parity
