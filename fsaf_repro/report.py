"""report.md of a run directory, in the recipe's layout, with PNG plots beside it.

Rendered from one typed, checked context (report_context.ReportContext). Sections, in the recipe's
order: what was run (and, for seeded weights or generated data, that its mAP is not the recipe's
claim); the anomalies the run's own figures show (fsaf_repro.anomalies), each also flagged beside its
figure; the 12-stat accuracy table with the recipe's reference columns and a verdict per backend that
states its mAP; the recipe's 7.1 throughput table with its ratio columns and gates, then this run's
records as one long table per device, the gates on them, and only the records a reference cell can be
compared with (built by fsaf_repro.report_perf; fsaf_repro.perf does every comparison); the stage-parity
table, each row with the rule it is judged by and the figure beside its verdict; plots
(fsaf_repro.report_plots); the run's stages and artifacts.

Plots need matplotlib (the `plots` extra); without it they are skipped and the report says why. The
images with their detections drawn need only OpenCV.
"""
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .anomalies import (PARITY_MATCH_RATE_BELOW_RULE, PARITY_MAX_PAST_TOLERANCE, Anomaly, find_anomalies,
                        pair_subject)
from .fileio import atomic_write_text
from .parity import SideRole
from .report_context import ReportContext, RunKind
from .report_perf import perf_lines, table_row, table_rule
from .report_plots import DETECTIONS_DRAWN, DRAW_MIN_SCORE, draw_detections, plot_fps, plot_per_class
from .spec import accuracy_reference, load_recipe_spec

REPORT_NAME = "report.md"
DETECTION_IMAGES = 3
NOT_APPLICABLE_EMBEDDED = "not applicable (seeded weights / generated data)"
NOT_APPLICABLE_FITTED = "not applicable (weights fitted on generated shapes / generated data, not COCO)"


def plots_availability() -> Tuple[bool, str]:
    """(True, "") when matplotlib can draw here, else (False, the reason). It imports the classes the
    plots draw with (`report_plots.new_figure`) and switches no backend: planning calls it, and a caller's
    matplotlib (an interactive backend, pyplot state) stays as it was."""
    try:
        import matplotlib  # noqa: F401 (the package itself first: its submodules may be imported already)
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as exc:
        return False, (f"matplotlib is not installed ({exc}); install the `plots` extra "
                       "(pip install 'fsaf-repro[plots]') to get the PNG plots")
    except Exception as exc:  # a broken matplotlib install (backend, fonts) must not stop the report
        return False, f"matplotlib failed to load ({type(exc).__name__}: {exc})"
    return True, ""


# ----------------------------------------------------------------------------------------------
# Accuracy


def full_dataset_images() -> int:
    """The number of images of the recipe's evaluation set, read from spec accuracy.dataset."""
    dataset = accuracy_reference()["dataset"]
    match = re.search(r"(\d+) images", dataset)
    if not match:
        from .errors import SpecError
        raise SpecError(f"spec accuracy.dataset does not state its number of images: {dataset!r}")
    return int(match.group(1))


def accuracy_verdict(ap: float, kind: RunKind) -> str:
    """The recipe's verdict (mAP >= min_map and within max_drop of the PyTorch value) where it applies."""
    acc = accuracy_reference()
    if kind.fitted:
        return NOT_APPLICABLE_FITTED
    if kind.seeded and kind.generated:
        return NOT_APPLICABLE_EMBEDDED
    if kind.seeded:
        return "not applicable (seeded weights, not the trained checkpoint)"
    if kind.generated:
        return "not applicable (generated data, not COCO val2017)"
    full = full_dataset_images()
    min_map = acc["min_map"]["value"]
    ref = acc["pytorch_map"]["value"]
    drop = acc["max_drop_vs_pytorch"]["value"]
    if kind.num_images != full:
        smoke = acc.get("smoke") or {}
        if kind.num_images == smoke.get("num_images"):
            smoke_min = smoke["min_map"]["value"]
            outcome = "PASS" if ap >= smoke_min else "FAIL"
            sign = ">=" if ap >= smoke_min else "<"
            return (f"smoke run of {kind.num_images} images: {outcome} (mAP {ap:.3f} {sign} smoke minimum "
                    f"{smoke_min}); not the recipe's claim")
        return (f"not applicable (partial run: {kind.num_images} of {kind.total_images} images; "
                f"the claim needs all {full})")
    within_drop = round(ref - ap, 6) <= drop
    outcome = "PASS" if ap >= min_map and within_drop else "FAIL"
    map_sign = ">=" if ap >= min_map else "<"
    drop_sign = "<=" if within_drop else ">"
    return (f"{outcome} (mAP {ap:.3f} {map_sign} {min_map}; "
            f"drop vs PyTorch {ref:.3f}: {ref - ap:.3f} {drop_sign} {drop})")


def accuracy_lines(context: ReportContext) -> List[str]:
    acc = accuracy_reference()
    names = acc["stat_names"]
    metrics = context.metrics
    backends = sorted(metrics, key=lambda n: (n != "torch", n))
    lines = ["## Accuracy (recipe section 6)", ""]
    if not backends:
        lines.append("No backend produced results: no accuracy table.")
        return lines
    first = metrics[backends[0]]
    data_set = "generated COCO-format set" if context.generated else "val2017"
    lines.append(f"COCO bbox, {data_set} ({first['num_images']} images, {first['scorer']} scorer, annotations "
                 f"sha256 `{first['annotation_sha256'][:16]}`), score threshold {context.score_threshold}.")
    lines.append("")
    header = ["#", "stat"] + list(backends) + ["PyTorch ref. (6.2)", "om on 310 ref. (6.1)"]
    lines.append(table_row(header))
    lines.append(table_rule(len(header)))
    for i, name in enumerate(names):
        values = [metrics[b]["stats"][i] for b in backends]
        values += [acc["pytorch_stats"]["values"][i], acc["npu_stats"]["values"][i]]
        lines.append(table_row([str(i + 1), name] + [f"{value:.3f}" for value in values]))
    lines.append("")
    min_map, max_drop = acc["min_map"], acc["max_drop_vs_pytorch"]
    lines.append(f"Verdict, by the rule mAP >= {min_map['value']} and within {max_drop['value']} of PyTorch "
                 f"{acc['pytorch_map']['value']} ({min_map['source']}; {max_drop['source']}):")
    lines.append("")
    for b in backends:
        ap = metrics[b]["stats"][0]
        lines.append(f"- {b}: mAP {ap:.3f}: {accuracy_verdict(ap, context.run_kind)}")
    return lines


# ----------------------------------------------------------------------------------------------
# Parity


def parity_lines(context: ReportContext, anomalies: Sequence[Anomaly] = ()) -> List[str]:
    lines = ["## Stage parity (torch vs ONNX Runtime vs om)", ""]
    parity = context.parity
    if not parity:
        reason = context.skipped_steps.get("parity", "not run")
        lines.append(f"Not run: {reason}.")
        return lines
    tol = parity["tolerances"]
    image_ids = ", ".join(str(i) for i in parity["image_ids"])
    lines.append(f"The same batch of {len(parity['image_ids'])} images (ids {image_ids}) through each stage, padded "
                 "outputs compared (rows paired by label and closeness; score-0 rows are padding). Each row is "
                 "judged by the rule of its compared side's precision (spec `parity`), shown in the row beside the "
                 "figure it was judged on:")
    lines.append("")
    lines.append(f"- fp32: {_fp32_rule(tol)};")
    lines.append(f"- fp16 (the om, or its CPU stand-in): {_fp16_rule(tol)}. Its largest difference over all rows "
                 f"and its match rate at IoU >= {tol['match_iou']} are shown, not judged (a detection at the score "
                 "threshold may be kept on one side only).")
    lines.append("")
    lines.append("| reference | compared | rule | judged figure | within tolerance | detections (ref / other) | "
                 f"max box diff (px) | max score diff | labels agree | match IoU >= {tol['match_iou']} | mAP delta |")
    lines.append(table_rule(11))
    flagged = set(a.subject for a in anomalies if a.kind in (PARITY_MAX_PAST_TOLERANCE, PARITY_MATCH_RATE_BELOW_RULE))
    lines += [_parity_row(pair, tol, pair_subject(pair) in flagged) for pair in parity["pairs"]]
    if flagged:
        lines.append("")
        lines.append("A figure marked \\* is past the fp16 tolerance on a passing fp16 row: the fp16 rule does not "
                     "judge it (see Anomalies).")
    om_rows = [p for p in parity["pairs"] if p.get("other_role") == SideRole.OM.value]  # by role, not label
    if not om_rows:
        reason = context.skipped_steps.get("convert", "no om backend ran")
        lines.append("")
        lines.append(f"No om row: {reason}.")
    return lines


def _fp32_rule(tol):
    return (f"every paired row within {tol['box_abs_tol_px']} px (boxes) and {tol['score_abs_tol']} (scores), "
            "the same detection counts and labels")


def _fp16_rule(tol):
    return (f"fp16_agreement (the share of the reference's detections found with the same label within "
            f"{tol['fp16_om_box_abs_tol_px']} px and {tol['fp16_om_score_abs_tol']}) >= "
            f"{tol['fp16_om_min_match_rate']}")


def _parity_row(pair, tol, flagged):
    delta = pair.get("map_delta")
    map_delta = "n/a (not run over the data set)" if delta is None else f"{delta:+.4f}"
    verdict = "yes" if pair["within_tolerance"] else "NO"
    cells = _fp16_cells(pair, tol, flagged) if pair.get("fp16_agreement") is not None else _fp32_cells(pair, tol)
    rule, judged, box, score, match = cells
    return table_row([pair["reference"], pair["other"], rule, judged, verdict,
                       f"{pair['detections_ref']} / {pair['detections_other']}", box, score,
                       f"{pair['label_agreement']:.1%}", match, map_delta])


def _fp16_cells(pair, tol, flagged):
    """(rule, judged figure, max box, max score, match rate) of an fp16 row: judged by the agreement share;
    the others shown, marked when past the fp16 tolerance (an anomaly of a passing row)."""
    agreement, min_rate = pair["fp16_agreement"], tol["fp16_om_min_match_rate"]
    sign = ">=" if agreement["rate"] >= min_rate else "<"
    judged = f"fp16_agreement {agreement['rate']:.3f} {sign} {min_rate} ({agreement['found']} of {agreement['total']})"
    box_mark = "\\*" if flagged and pair["max_box_abs_diff"] > tol["fp16_om_box_abs_tol_px"] else ""
    match_mark = "\\*" if flagged and pair["match_rate"] < min_rate else ""
    return (f"fp16: share >= {min_rate}", judged, f"{pair['max_box_abs_diff']:.3g}{box_mark} (not judged)",
            f"{pair['max_score_abs_diff']:.3g} (not judged)", f"{pair['match_rate']:.1%}{match_mark} (not judged)")


def _fp32_cells(pair, tol):
    """(rule, judged figure, max box, max score, match rate) of an fp32 row: every row judged."""
    box, score = pair["max_box_abs_diff"], pair["max_score_abs_diff"]
    box_sign = "<=" if box <= tol["box_abs_tol_px"] else ">"
    score_sign = "<=" if score <= tol["score_abs_tol"] else ">"
    same = "counts and labels equal" if pair["counts_equal"] and pair["labels_equal"] else "counts or labels differ"
    judged = (f"max {box:.3g} {box_sign} {tol['box_abs_tol_px']} px, {score:.3g} {score_sign} "
              f"{tol['score_abs_tol']}; {same}")
    return (f"fp32: every row <= {tol['box_abs_tol_px']} px, {tol['score_abs_tol']}", judged, f"{box:.3g}",
            f"{score:.3g}", f"{pair['match_rate']:.1%}")


# ----------------------------------------------------------------------------------------------
# The report


def header_lines(context: ReportContext) -> List[str]:
    lines = ["# FSAF R50-FPN reproduction report", ""]
    lines += _not_the_claim_lines(context)
    lines.append("")
    lines.append(_what_was_run(context))
    if context.threads:
        perf_threads = f"{context.perf_threads} thread(s)" if context.perf_threads else "their default thread count"
        lines.append("")
        lines.append(f"CPU runtimes (torch, ONNX Runtime) ran with {context.threads} intra-op thread(s) over the "
                     f"data set (a core left to the image loader) and {perf_threads} in the pure-inference timing.")
    ckpt = context.checkpoint
    if not ckpt.seeded:
        official = load_recipe_spec()["checkpoint"]
        if not ckpt.sha256.startswith(official["sha256_prefix"]):
            lines.append("")
            lines.append(f"Note: the checkpoint's sha256 does not start with {official['sha256_prefix']} "
                         f"(the official {official['file_name']}).")
    lines.append("")
    return lines


def _not_the_claim_lines(context):
    """The warning that a run on seeded weights or generated data does not measure the recipe's claim."""
    if context.embedded and context.fit:
        return _fitted_lines(context)
    if context.embedded:
        acc = accuracy_reference()
        recipe_input = load_recipe_spec()["input"]
        h, w = context.canvas
        return ["**Embedded default run: the weights are seeded (random, calibrated), not trained, and the "
                "images are generated, not COCO val2017. Its mAP is NOT the recipe's claim** (recipe: "
                f"{acc['pytorch_map']['value']} PyTorch, {acc['om_310_map']['value']} om on 310). It shows every "
                f"step working on this host, at a reduced input size of {h}x{w} (the recipe's is "
                f"{recipe_input['height']}x{recipe_input['width']}) on {context.dataset.num_images} "
                "generated images."]
    lines = []
    if context.seeded:
        lines.append("**The weights are seeded, not trained: the mAP below is NOT the recipe's claim.**")
    if context.generated:
        lines.append("**The images are generated, not COCO val2017: the mAP below is NOT the recipe's claim.**")
    return lines


def _fitted_lines(context):
    """The first lines of a run whose weights reproduce fitted on generated shapes (fsaf_repro.train)."""
    acc = accuracy_reference()
    recipe_input = load_recipe_spec()["input"]
    fit = context.fit
    h, w = context.canvas
    params = fit["params"]
    return [f"**Embedded default run: trained on generated shapes for {params['steps']} steps, not COCO; not the "
            "recipe's claim.** The weights were fitted here with FSAF's training rule (neck and head in a "
            f"{params['channels']}-channel subspace, on the seeded backbone's features of {params['train_images']} "
            f"generated images, seed {fit['data_seed']}, {fit['wall_s']:.0f} s on {fit['threads']} thread(s)); the "
            f"{context.dataset.num_images} evaluated images are generated with another seed, not COCO val2017, "
            f"at a reduced input size of {h}x{w} (the recipe's is {recipe_input['height']}x{recipe_input['width']}). "
            f"The recipe's claim is {acc['pytorch_map']['value']} PyTorch, {acc['om_310_map']['value']} om on 310, "
            "on COCO with the official checkpoint."]


def _what_was_run(context):
    ckpt = context.checkpoint
    data = context.dataset
    h, w = context.canvas
    seeded = (" (fitted on generated shapes, in the official layout)" if context.fit
              else " (seeded weights in the official layout)" if ckpt.seeded else "")
    source = "the generated set" if data.generated else f"`{data.image_dir}`"
    subset = ("" if data.num_images == data.total_images
              else f", first {data.num_images} of {data.total_images} by id")
    ran = ", ".join(b.name for b in context.backends if b.status == "ran") or "none"
    batch_sizes = ", ".join(str(b) for b in context.batch_sizes)
    return (f"What was run: checkpoint `{os.path.basename(ckpt.path)}`{seeded} (sha256 `{ckpt.sha256[:16]}`); "
            f"{data.num_images} images from {source} (annotations sha256 `{data.annotation_sha256[:16]}`"
            f"{subset}); input {h}x{w}; backends run: {ran}; batch sizes {batch_sizes} (dataset inference at "
            f"batch size {context.infer_batch_size}).")


def steps_lines(context: ReportContext) -> List[str]:
    lines = ["## Steps", ""]
    lines.append("| step | status | detail |")
    lines.append("|---|---|---|")
    export = (context.export or {}).get("flavours", {})
    for flavour in sorted(export):
        item = export[flavour]
        outputs = ", ".join(f"{o['name']} {o['shape']}" for o in item["outputs"])
        lines.append(f"| export {flavour} | done | `{item['file']}`; outputs {outputs}; {item['checker']} |")
    skipped = context.skipped_steps
    if context.convert:
        conv = context.convert
        oms = ", ".join(f"`{p}`" for _, p in sorted(conv["oms"].items(), key=lambda kv: int(kv[0])))
        lines.append(f"| convert (atc) | done | {len(conv['oms'])} om(s) for {conv['soc_version']}: {oms} |")
    else:
        lines.append(f"| convert (atc) | skipped | {skipped.get('convert', 'not run')} |")
    results = context.results
    for backend in context.backends:
        if backend.status == "ran":
            result_file = results.get(backend.name, "-")
            lines.append(f"| inference {backend.name} | done | model `{backend.model}`, device "
                         f"{backend.device}, {backend.precision}; results `{result_file}` |")
        else:
            lines.append(f"| inference {backend.name} | {backend.status} | {backend.reason} |")
    # a stage that failed (its one-line reason, the log with its traceback) or was skipped because of one
    for name, failure in sorted(context.failures.items()):
        lines.append(f"| stage {name} | {failure.status} | {failure.reason}; log `{failure.log}` |")
    lines.append("")
    return lines


def stages_lines(context: ReportContext) -> List[str]:
    lines = ["## Stages (reused on a re-run while their key is unchanged)", ""]
    lines.append("| stage | key | seconds when it ran |")
    lines.append("|---|---|---|")
    for stage in context.stages:
        seconds = "-" if stage.seconds is None else f"{stage.seconds:.1f}"
        lines.append(f"| {stage.name} | `{(stage.key or '')[:12]}` | {seconds} |")
    lines.append("")
    return lines


def anomaly_lines(anomalies: Sequence[Anomaly]) -> List[str]:
    """The anomalies the run's own figures show, each beside the figure (its flag in the table row) and
    here in full."""
    lines = ["## Anomalies this run can see", ""]
    if not anomalies:
        return lines + ["None: no pure-inference figure below its end-to-end one, no throughput spread wider than "
                        "its figure, no parity maximum past its tolerance on a passing row.", ""]
    lines += [f"- **{anomaly.kind}**: {anomaly.explanation}" for anomaly in anomalies]
    return lines + [""]


def render_report(context: ReportContext, plots: Optional[Sequence[Tuple[str, str]]] = None,
                  plots_skipped: Optional[str] = None,
                  detection_images: Optional[Sequence[Tuple[str, str]]] = None) -> str:
    """The text of report.md (deterministic for a given context)."""
    anomalies = find_anomalies(context.perf_records, context.parity, context.threads, context.perf_threads)
    lines = header_lines(context)
    lines += anomaly_lines(anomalies)
    lines += steps_lines(context)
    lines += accuracy_lines(context)
    lines.append("")
    lines += perf_lines(context.perf_records, context.canvas, anomalies)
    lines.append("")
    lines += parity_lines(context, anomalies)
    lines.append("")
    lines.append("## Plots")
    lines.append("")
    if plots_skipped:
        lines.append(f"Plots skipped: {plots_skipped.rstrip('.')}.")
    for title, rel in plots or []:
        lines.append(f"![{title}]({rel})")
        lines.append("")
    lines.append("")
    lines.append(f"### Detections drawn (ground truth: 'GT class', dark outline under white dashes; detections "
                 f"red, 'class score': those scoring >= {DRAW_MIN_SCORE}, at most {DETECTIONS_DRAWN}, or the top "
                 f"{DETECTIONS_DRAWN} when none does)")
    lines.append("")
    if detection_images:
        for title, rel in detection_images:
            lines.append(f"![{title}]({rel})")
            lines.append("")
    elif context.results:
        lines.append("No image drawn (the report was not given the run's images).")
    else:
        lines.append("No image drawn (no backend produced results).")
    lines.append("")
    lines += stages_lines(context)
    lines.append("Artifacts: `onnx/` (models + sidecars), `om/` (when atc ran), `infer/` (runner results), "
                 "`results_<backend>.json`, `metrics_<backend>.json`, `perf.json`, `parity.json`, `logs/`, "
                 "`stages.json`, `report_inputs.json`.")
    return "\n".join(lines) + "\n"


def write_report(run_dir: str, context: ReportContext, image_set: Any = None) -> Dict[str, Any]:
    """Write report.md, the plots and the drawn detections; returns {"record", "outputs"}."""
    plot_dir = os.path.join(run_dir, "plots")
    if not os.path.isdir(plot_dir):
        os.makedirs(plot_dir)
    plots, outputs, plots_skipped = _write_plots(context, plot_dir)
    drawn = _write_detection_images(run_dir, plot_dir, context, image_set) if image_set is not None else []
    outputs += [os.path.join(run_dir, rel) for _, rel in drawn]
    text = render_report(context, plots, plots_skipped, drawn)
    report_path = os.path.join(run_dir, REPORT_NAME)
    atomic_write_text(report_path, text)
    outputs.append(report_path)
    return {"record": {"plots": [rel for _, rel in plots], "plots_skipped": plots_skipped,
                       "detection_images": [rel for _, rel in drawn]}, "outputs": outputs}


def _write_plots(context, plot_dir):
    """([(title, relative path)], [paths written], the reason plots were skipped or None)."""
    ok, reason = plots_availability()
    if not ok:
        return [], [], reason
    made = [("fps by batch size per device", "fps_by_batch.png", plot_fps)]
    if context.metrics:
        made.append(("per-class AP", "per_class_ap.png", plot_per_class))
    plots, outputs = [], []
    for title, name, draw in made:
        draw(context, os.path.join(plot_dir, name))
        plots.append((title, "plots/" + name))
        outputs.append(os.path.join(plot_dir, name))
    return plots, outputs, None


def _write_detection_images(run_dir, plot_dir, context, image_set):
    """The first DETECTION_IMAGES images with the first backend's detections and the ground truth drawn."""
    if not context.results:
        return []
    from .data import read_annotation_file
    from .results_json import read_results_json
    backend = sorted(context.results, key=lambda n: (n != "torch", n))[0]
    detections = read_results_json(os.path.join(run_dir, context.results[backend]))
    annotations = read_annotation_file(context.dataset.annotation_file, need_annotations=True).data["annotations"]
    drawn = []
    for meta in image_set.metas[:DETECTION_IMAGES]:
        path = os.path.join(plot_dir, f"detections_{meta.image_id}.png")
        made = draw_detections(meta.path, [d for d in detections if d["image_id"] == meta.image_id],
                               [a for a in annotations if a["image_id"] == meta.image_id], path)
        unplaced = f", {made.labels_not_placed} label(s) with no free place" if made.labels_not_placed else ""
        drawn.append((f"image {meta.image_id} ({backend}: {made.detections_drawn} detection(s) and "
                      f"{made.ground_truth_drawn} ground-truth box(es) drawn, enlarged x{made.scale}{unplaced})",
                      f"plots/detections_{meta.image_id}.png"))
    return drawn
