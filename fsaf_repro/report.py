"""report.md of a run directory, in the recipe's layout, with PNG plots beside it.

Sections, in the recipe's order: what was run (and, for seeded weights or generated data, that its
mAP is not the recipe's claim); the 12-stat accuracy table with the recipe's reference columns and a
verdict; throughput by batch size per device in the layout of the recipe's section 7.1 table, with its
ratio columns and gates (fsaf_repro.perf does every comparison, so a figure of another device, mode or
precision is labelled, never silently ratioed); the stage-parity table (torch vs ONNX Runtime vs om);
plots; the run's stages and artifacts.

Plots need matplotlib (the `plots` extra); without it they are skipped and the report says why. The
images with their detections drawn need only OpenCV.
"""
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .fileio import atomic_write_text
from .spec import accuracy_reference, coco_category_ids, coco_class_names, load_recipe_spec, performance_reference

REPORT_NAME = "report.md"
DETECTION_IMAGES = 3
DETECTIONS_DRAWN = 10
# Drawn: detections scoring at least this (a confident detector's boxes, not its 100 low-score candidates);
# when none does (seeded weights), the top DETECTIONS_DRAWN whatever their score.
DRAW_MIN_SCORE = 0.3
NOT_APPLICABLE_EMBEDDED = "not applicable (seeded weights / generated data)"
NOT_APPLICABLE_FITTED = "not applicable (weights fitted on generated shapes / generated data, not COCO)"


def plots_availability() -> Tuple[bool, str]:
    """(True, "") when matplotlib can draw here, else (False, the reason). It imports the classes the
    plots draw with (`_new_figure`) and switches no backend: planning calls it, and a caller's
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


def accuracy_verdict(ap: float, context: Dict[str, Any]) -> str:
    """The recipe's verdict (mAP >= min_map and within max_drop of the PyTorch value) where it applies."""
    acc = accuracy_reference()
    if context.get("fit"):
        return NOT_APPLICABLE_FITTED
    if context.get("seeded") and context.get("generated"):
        return NOT_APPLICABLE_EMBEDDED
    if context.get("seeded"):
        return "not applicable (seeded weights, not the trained checkpoint)"
    if context.get("generated"):
        return "not applicable (generated data, not COCO val2017)"
    dataset = context["dataset"]
    full = full_dataset_images()
    min_map = acc["min_map"]["value"]
    ref = acc["pytorch_map"]["value"]
    drop = acc["max_drop_vs_pytorch"]["value"]
    if dataset["num_images"] != full:
        smoke = acc.get("smoke") or {}
        if dataset["num_images"] == smoke.get("num_images"):
            smoke_min = smoke["min_map"]["value"]
            outcome = "PASS" if ap >= smoke_min else "FAIL"
            return (f"smoke run of {dataset['num_images']} images: {outcome} (mAP {ap:.3f} vs smoke minimum "
                    f"{smoke_min}); not the recipe's claim")
        return (f"not applicable (partial run: {dataset['num_images']} of {dataset['total_images']} images; "
                f"the claim needs all {full})")
    within_drop = round(ref - ap, 6) <= drop
    outcome = "PASS" if ap >= min_map and within_drop else "FAIL"
    map_sign = ">=" if ap >= min_map else "<"
    drop_sign = "<=" if within_drop else ">"
    return (f"{outcome} (mAP {ap:.3f} {map_sign} {min_map}; "
            f"drop vs PyTorch {ref:.3f}: {ref - ap:.3f} {drop_sign} {drop})")


def accuracy_lines(context: Dict[str, Any]) -> List[str]:
    acc = accuracy_reference()
    names = acc["stat_names"]
    metrics = context.get("metrics") or {}
    backends = sorted(metrics, key=lambda n: (n != "torch", n))
    lines = ["## Accuracy (recipe section 6)", ""]
    if not backends:
        lines.append("No backend produced results: no accuracy table.")
        return lines
    first = metrics[backends[0]]
    data_set = "generated COCO-format set" if context.get("generated") else "val2017"
    lines.append(f"COCO bbox, {data_set} ({first['num_images']} images, {first['scorer']} scorer, annotations "
                 f"sha256 `{first['annotation_sha256'][:16]}`), score threshold {context.get('score_threshold')}.")
    lines.append("")
    header = ["#", "stat"] + [f"{b} (measured)" for b in backends] + [
        "PyTorch reference (recipe 6.2)", "om on 310 reference (recipe 6.1)"]
    lines.append(_table_row(header))
    lines.append(_table_rule(len(header)))
    for i, name in enumerate(names):
        values = [metrics[b]["stats"][i] for b in backends]
        values += [acc["pytorch_stats"]["values"][i], acc["npu_stats"]["values"][i]]
        lines.append(_table_row([str(i + 1), name] + [f"{value:.3f}" for value in values]))
    lines.append("")
    min_map, max_drop = acc["min_map"], acc["max_drop_vs_pytorch"]
    lines.append(f"Verdict (mAP >= {min_map['value']} and within {max_drop['value']} of PyTorch "
                 f"{acc['pytorch_map']['value']}; {min_map['source']}, {max_drop['source']}):")
    lines.append("")
    for b in backends:
        lines.append(f"- {b}: {accuracy_verdict(metrics[b]['stats'][0], context)}")
    return lines


# ----------------------------------------------------------------------------------------------
# Throughput


def _column_label(record):
    # a partial figure (a resumed run timed only its last session) gets a column of its own, labelled so
    partial = f" PARTIAL {record.get('images')}/{record.get('images_total')} images" if record.get("partial") else ""
    return f"{record['device']} {record['backend']} {record['precision']} {record['mode']}{partial}"


def measured_columns(records: Sequence[Dict[str, Any]]) -> Dict[str, Dict[int, Dict[str, Any]]]:
    """Measured records grouped per (device, backend, precision, mode, chips): {label: {batch: record}}."""
    columns = {}
    for record in records:
        label = _column_label(record)
        columns.setdefault(label, {})[int(record["batch_size"])] = record
    return columns


def perf_lines(context: Dict[str, Any]) -> List[str]:
    """The throughput section: the 7.1 table with the measured columns beside it, the gates on the
    recipe's table and on the measured records, and each measured record against its reference cell."""
    perf = performance_reference()
    measured = list(context.get("perf_records") or [])
    canvas = context.get("canvas")
    at_input = f" at input {canvas[0]}x{canvas[1]}" if canvas else ""
    lines = ["## Throughput (recipe section 7.1)", ""]
    lines.append(f"fps by batch size. Reference columns: {perf['source']} ({perf['unit']}); empty cells in the "
                 f"recipe are out of device memory. Measured columns: this run{at_input}.")
    lines.append("")
    lines += _ThroughputTable(perf, measured).lines()
    lines.append("")
    lines.append("The ratio columns are computed from the per-batch reference rows. The recipe prints a "
                 f"`310P/T4` column whose values equal 310P_aoe/T4. {perf['published_best_batch_note']}")
    lines.append("")
    lines += _reference_gate_lines()
    lines += _measured_gate_lines(perf, measured)
    lines += card_lines(measured)
    lines += _against_reference_lines(measured)
    lines += _mode_lines(measured)
    return lines


def _fps(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"


def _fps_at_batch(record, digits=4):
    """'fps (bsN)' of a best-batch record, '-' for none."""
    return f"{_fps(record['fps'], digits)} (bs{record['batch_size']})" if record else "-"


def _table_row(cells):
    return "| " + " | ".join(cells) + " |"


def _table_rule(width):
    return "|" + "|".join(["---"] * width) + "|"


class _ThroughputTable:
    """The recipe's 7.1 table: a row per batch size and a best-batch row; a column per reference
    device, per gate ratio and per measured (device, backend, precision, mode) group."""

    def __init__(self, perf, measured):
        from .perf import reference_records
        self.perf = perf
        self.reference = reference_records()
        self.ref_cells = {(r["device"], r["batch_size"]): r for r in self.reference}
        self.devices = list(perf["devices"])
        self.ratio_defs = [(g["numerator"], g["denominator"]) for g in perf["gates"]]
        self.columns = measured_columns(measured)
        self.labels = sorted(self.columns)
        self.batch_sizes = sorted({int(b) for b in perf["batch_sizes"]} | {int(r["batch_size"]) for r in measured})

    def lines(self):
        header = (["batch"] + self.devices + [f"{n}/{d}" for n, d in self.ratio_defs]
                  + [f"{label} (measured)" for label in self.labels])
        rows = [self._batch_row(bs) for bs in self.batch_sizes] + [self._best_row()]
        return [_table_row(header), _table_rule(len(header))] + [_table_row(cells) for cells in rows]

    def _reference_cell(self, device, bs):
        ref = self.ref_cells.get((device, bs))
        if ref:
            return _fps(ref["fps"])
        return "OOM" if str(bs) in self.perf["table"][device] else "-"

    def _batch_row(self, bs):
        from .perf import compare_records
        cells = [f"bs{bs}"] + [self._reference_cell(device, bs) for device in self.devices]
        for num, den in self.ratio_defs:
            a, b = self.ref_cells.get((num, bs)), self.ref_cells.get((den, bs))
            cells.append(_fps(compare_records(a, b)["ratio"]) if a and b else "-")
        for label in self.labels:
            record = self.columns[label].get(bs)
            cells.append(_fps(record["fps"], 3) if record else "-")
        return cells

    def _best_row(self):
        from .perf import best_batch, compare_records
        bests = {device: best_batch([r for r in self.reference if r["device"] == device]) for device in self.devices}
        cells = ["best batch"] + [_fps_at_batch(bests[device]) for device in self.devices]
        for num, den in self.ratio_defs:
            if bests.get(num) and bests.get(den):
                cells.append(_fps(compare_records(bests[num], bests[den])["ratio"]))
            else:
                cells.append("-")
        cells += [_fps_at_batch(best_batch(list(self.columns[label].values())), 3) for label in self.labels]
        return cells


def _reference_gate_lines():
    from .perf import evaluate_gates, format_gates, reference_records
    gates = format_gates(evaluate_gates(reference_records(), mode="inference"))
    return ["### Gates on the recipe's table", "", "```", gates, "```", ""]


def _measured_gate_lines(perf, measured):
    from .perf import evaluate_gates, format_gates
    lines = ["### Gates on the measured records", ""]
    gate_devices = {device for g in perf["gates"] for device in (g["numerator"], g["denominator"])}
    measured_devices = sorted({r["device"] for r in measured})
    if not measured:
        lines.append("No throughput was measured in this run.")
    elif not gate_devices & set(measured_devices):
        lines.append(f"Not evaluated: this run measured device(s) {', '.join(measured_devices)} only; the gates "
                     f"compare {', '.join(sorted(gate_devices))} (give records measured on those devices with "
                     "--extra-perf, or run on an NPU host).")
    else:
        lines.append("```")
        for mode in sorted({r["mode"] for r in measured}):
            lines.append(f"[{mode} records]")
            lines.append(format_gates(evaluate_gates(measured, mode=mode)))
        lines.append("```")
    lines.append("")
    return lines


def card_lines(measured: List[Dict[str, Any]]) -> List[str]:
    """Cards measured as cards (perf --devices): the recipe's convention (one chip x N) beside the
    measured card figure (all chips at once), with their ratio and the scaling efficiency; then the
    gates on each basis. Nothing when no card was measured."""
    from .perf import CARD_BASES, evaluate_gates, format_gates
    cards = [r for r in measured if (r.get("card") or {}).get("basis") == "measured"]
    if not cards:
        return []
    lines = ["### Cards measured as cards", "",
             "Convention: " + CARD_BASES["convention"] + ". Measured: " + CARD_BASES["measured"] + ".", "",
             _table_row(["device", "backend", "batch", "chips", "one chip alone", "convention (x N)",
                         "measured card", "measured / convention", "per chip", "scaling efficiency"]),
             _table_rule(10)]
    for record in cards:
        card = record["card"]
        lines.append(_table_row([
            record["device"], record["backend"], str(record["batch_size"]), str(len(card["devices"])),
            _fps(card["single_chip_fps"], 3), _fps(card["convention_fps"], 3), _fps(card["measured_fps"], 3),
            _fps(card["measured_fps"] / card["convention_fps"], 3),
            ", ".join(f"{d}: {fps:.3f}" for d, fps in zip(card["devices"], card["per_chip_fps"])),
            _fps(card["scaling_efficiency"], 3)]))
    lines += ["", "```"]
    for basis in CARD_BASES:
        lines.append(f"[gates on the {basis} card figures]")
        lines.append(format_gates(evaluate_gates(measured, mode=cards[0]["mode"], card_basis=basis)))
    return lines + ["```", ""]


def _against_reference_lines(measured):
    from .perf import compare_to_reference
    lines = ["### Measured records against the reference cells", ""]
    if not measured:
        return lines
    lines.append("| measured | batch | fps | reference fps | ratio | caveats |")
    lines.append("|---|---|---|---|---|---|")
    for row in compare_to_reference(measured):
        record = row["measured"]
        reference_fps = _fps(row["reference"]["fps"]) if row["reference"] else "-"
        ratio = _fps(row["ratio"], 3) if row["ratio"] is not None else "not ratioed"
        caveats = "; ".join(row["caveats"]) or "-"
        lines.append(f"| {_column_label(record)} | {record['batch_size']} | {record['fps']:.3f} | {reference_fps} "
                     f"| {ratio} | {caveats} |")
    lines.append("")
    return lines


def _mode_lines(measured):
    from .perf import MODE_DEFINITIONS
    lines = ["Modes:", ""]
    for mode in sorted({"inference"} | {r["mode"] for r in measured}):
        lines.append(f"- {mode}: {MODE_DEFINITIONS[mode]}")
    return lines


# ----------------------------------------------------------------------------------------------
# Parity


def parity_lines(context: Dict[str, Any]) -> List[str]:
    lines = ["## Stage parity (torch vs ONNX Runtime vs om)", ""]
    parity = context.get("parity")
    if not parity:
        reason = (context.get("skipped_steps") or {}).get("parity", "not run")
        lines.append(f"Not run: {reason}.")
        return lines
    tol = parity["tolerances"]
    image_ids = ", ".join(str(i) for i in parity["image_ids"])
    lines.append(f"The same batch of {len(parity['image_ids'])} images (ids {image_ids}) through each stage, padded "
                 "outputs compared (rows paired by label and closeness; score-0 rows are padding). Tolerances "
                 f"(spec `parity`): fp32 boxes {tol['box_abs_tol_px']} px, scores {tol['score_abs_tol']} (every "
                 f"row); fp16 (om, or its CPU stand-in) at least {tol['fp16_om_min_match_rate']:.0%} of the "
                 f"reference's detections found with the same label within {tol['fp16_om_box_abs_tol_px']} px and "
                 f"{tol['fp16_om_score_abs_tol']} (the largest difference over all rows is shown, not judged: a "
                 "detection at the score threshold may be kept on one side only).")
    lines.append("")
    lines.append("| reference | compared | detections (ref / other) | max abs diff dets boxes (px) | "
                 f"max abs diff dets scores | labels agreement | match rate IoU >= {tol['match_iou']} | mAP delta | "
                 "within tolerance |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    lines += [_parity_row(pair) for pair in parity["pairs"]]
    om_rows = [p for p in parity["pairs"] if "(om" in p["other"]]
    if not om_rows:
        reason = (context.get("skipped_steps") or {}).get("convert", "no om backend ran")
        lines.append("")
        lines.append(f"No om row: {reason}.")
    return lines


def _parity_row(pair):
    delta = pair.get("map_delta")
    map_delta = "n/a (not run over the data set)" if delta is None else f"{delta:+.4f}"
    within = f"{'yes' if pair['within_tolerance'] else 'NO'} ({pair['tolerance']})"
    return (f"| {pair['reference']} | {pair['other']} | {pair['detections_ref']} / {pair['detections_other']} "
            f"| {pair['max_box_abs_diff']:.3g} | {pair['max_score_abs_diff']:.3g} | {pair['label_agreement']:.1%} "
            f"| {pair['match_rate']:.1%} | {map_delta} | {within} |")


# ----------------------------------------------------------------------------------------------
# Plots and drawn detections


def _save_figure(fig, path):
    try:
        fig.savefig(path, dpi=100, metadata={"Software": None})
    except TypeError:  # matplotlib before 3.0 has no metadata argument
        fig.savefig(path, dpi=100)


def _new_figure(width, height):
    """(figure, axes) on an Agg canvas of their own, without pyplot: no global backend is chosen or
    switched, and nothing is left to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def plot_fps(context: Dict[str, Any], path: str) -> None:
    from .perf import reference_records
    fig, ax = _new_figure(8, 5)
    for device in performance_reference()["devices"]:
        rows = sorted((r["batch_size"], r["fps"]) for r in reference_records() if r["device"] == device)
        ax.plot([b for b, _ in rows], [f for _, f in rows], marker="o", label=f"{device} (recipe)")
    for label, cells in sorted(measured_columns(context.get("perf_records") or []).items()):
        rows = sorted((b, r["fps"]) for b, r in cells.items())
        ax.plot([b for b, _ in rows], [f for _, f in rows], marker="s", linestyle="--",
                label=f"{label} (measured)")
    ax.set_xscale("log", base=2) if _has_base_kwarg() else ax.set_xscale("log", basex=2)
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("batch size")
    ax.set_ylabel("fps (images/s)")
    ax.set_title("FSAF throughput by batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path)


def _has_base_kwarg():
    import matplotlib
    parts = matplotlib.__version__.split(".")
    return (int(parts[0]), int(parts[1])) >= (3, 3)


def plot_per_class(context: Dict[str, Any], path: str) -> None:
    import numpy as np

    metrics = context.get("metrics") or {}
    backends = sorted(metrics, key=lambda n: (n != "torch", n))
    names = [row["name"] for row in metrics[backends[0]]["per_class"]]
    fig, ax = _new_figure(16, 5)
    width = 0.8 / max(1, len(backends))
    x = np.arange(len(names))
    for k, backend in enumerate(backends):
        values = [row["ap"] if row["ap"] is not None else 0.0 for row in metrics[backend]["per_class"]]
        ax.bar(x + k * width, values, width, label=backend)
    ax.set_xticks(x + width * (len(backends) - 1) / 2.0)
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("AP@[.50:.95]")
    ax.set_title("Per-class AP (classes without ground truth in this set: 0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def draw_detections(image_path: str, detections: Sequence[Dict[str, Any]], ground_truth: Sequence[Dict[str, Any]],
                    out_path: str, max_drawn: int = DETECTIONS_DRAWN) -> int:
    """The original image with ground truth (green) and the top detections (red, 'name score') drawn: those
    scoring >= DRAW_MIN_SCORE (at most `max_drawn`), or the top `max_drawn` when none does."""
    import cv2

    from .data import read_bgr
    names = dict(zip(coco_category_ids(), coco_class_names()))
    image = read_bgr(image_path).copy()
    thickness = max(1, int(round(max(image.shape[:2]) / 400.0)))
    for ann in ground_truth:
        x, y, w, h = ann["bbox"]
        cv2.rectangle(image, (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h))),
                      (0, 200, 0), thickness)
    top = sorted(detections, key=lambda d: -d["score"])[:max_drawn]
    confident = [det for det in top if det["score"] >= DRAW_MIN_SCORE]
    top = confident or top
    for det in top:
        x, y, w, h = det["bbox"]
        p1, p2 = (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h)))
        cv2.rectangle(image, p1, p2, (0, 0, 230), thickness)
        text = f"{names.get(det['category_id'], str(det['category_id']))} {det['score']:.2f}"
        cv2.putText(image, text, (p1[0], max(10, p1[1] - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 230), 1,
                    cv2.LINE_AA)
    if not cv2.imwrite(out_path, image):
        from .errors import DataError
        raise DataError(f"OpenCV failed to write {out_path}")
    return len(top)


# ----------------------------------------------------------------------------------------------
# The report


def header_lines(context: Dict[str, Any]) -> List[str]:
    lines = ["# FSAF R50-FPN reproduction report", ""]
    lines += _not_the_claim_lines(context)
    lines.append("")
    lines.append(_what_was_run(context))
    if context.get("threads"):
        perf_threads = context.get("perf_threads") or "their default number of"
        lines.append("")
        lines.append(f"CPU runtimes (torch, ONNX Runtime) ran with {context['threads']} intra-op thread(s) over the "
                     f"data set (a core left to the image loader) and {perf_threads} in the pure-inference timing.")
    ckpt = context["checkpoint"]
    if not ckpt["seeded"]:
        official = load_recipe_spec()["checkpoint"]
        if not ckpt["sha256"].startswith(official["sha256_prefix"]):
            lines.append("")
            lines.append(f"Note: the checkpoint's sha256 does not start with {official['sha256_prefix']} "
                         f"(the official {official['file_name']}).")
    lines.append("")
    return lines


def _not_the_claim_lines(context):
    """The warning that a run on seeded weights or generated data does not measure the recipe's claim."""
    if context.get("embedded") and context.get("fit"):
        return _fitted_lines(context)
    if context.get("embedded"):
        acc = accuracy_reference()
        recipe_input = load_recipe_spec()["input"]
        h, w = context["canvas"]
        return ["**Embedded default run: the weights are seeded (random, calibrated), not trained, and the "
                "images are generated, not COCO val2017. Its mAP is NOT the recipe's claim** (recipe: "
                f"{acc['pytorch_map']['value']} PyTorch, {acc['om_310_map']['value']} om on 310). It shows every "
                f"step working on this host, at a reduced input size of {h}x{w} (the recipe's is "
                f"{recipe_input['height']}x{recipe_input['width']}) on {context['dataset']['num_images']} "
                "generated images."]
    lines = []
    if context.get("seeded"):
        lines.append("**The weights are seeded, not trained: the mAP below is NOT the recipe's claim.**")
    if context.get("generated"):
        lines.append("**The images are generated, not COCO val2017: the mAP below is NOT the recipe's claim.**")
    return lines


def _fitted_lines(context):
    """The first lines of a run whose weights reproduce fitted on generated shapes (fsaf_repro.train)."""
    acc = accuracy_reference()
    recipe_input = load_recipe_spec()["input"]
    fit = context["fit"]
    h, w = context["canvas"]
    params = fit["params"]
    return [f"**Embedded default run: trained on generated shapes for {params['steps']} steps, not COCO; not the "
            "recipe's claim.** The weights were fitted here with FSAF's training rule (neck and head in a "
            f"{params['channels']}-channel subspace, on the seeded backbone's features of {params['train_images']} "
            f"generated images, seed {fit['data_seed']}, {fit['wall_s']:.0f} s on {fit['threads']} thread(s)); the "
            f"{context['dataset']['num_images']} evaluated images are generated with another seed, not COCO val2017, "
            f"at a reduced input size of {h}x{w} (the recipe's is {recipe_input['height']}x{recipe_input['width']}). "
            f"The recipe's claim is {acc['pytorch_map']['value']} PyTorch, {acc['om_310_map']['value']} om on 310, "
            "on COCO with the official checkpoint."]


def _what_was_run(context):
    ckpt = context["checkpoint"]
    data = context["dataset"]
    h, w = context["canvas"]
    seeded = (" (fitted on generated shapes, in the official layout)" if context.get("fit")
              else " (seeded weights in the official layout)" if ckpt["seeded"] else "")
    source = "the generated set" if data["generated"] else f"`{data['image_dir']}`"
    subset = ("" if data["num_images"] == data["total_images"]
              else f", first {data['num_images']} of {data['total_images']} by id")
    ran = ", ".join(b["name"] for b in context["backends"] if b["status"] == "ran") or "none"
    batch_sizes = ", ".join(str(b) for b in context["batch_sizes"])
    return (f"What was run: checkpoint `{os.path.basename(ckpt['path'])}`{seeded} (sha256 `{ckpt['sha256'][:16]}`); "
            f"{data['num_images']} images from {source} (annotations sha256 `{data['annotation_sha256'][:16]}`"
            f"{subset}); input {h}x{w}; backends run: {ran}; batch sizes {batch_sizes} (dataset inference at "
            f"batch size {context['infer_batch_size']}).")


def steps_lines(context: Dict[str, Any]) -> List[str]:
    lines = ["## Steps", ""]
    lines.append("| step | status | detail |")
    lines.append("|---|---|---|")
    export = (context.get("export") or {}).get("flavours", {})
    for flavour in sorted(export):
        item = export[flavour]
        outputs = ", ".join(f"{o['name']} {o['shape']}" for o in item["outputs"])
        lines.append(f"| export {flavour} | done | `{item['file']}`; outputs {outputs}; {item['checker']} |")
    skipped = context.get("skipped_steps") or {}
    if context.get("convert"):
        conv = context["convert"]
        oms = ", ".join(f"`{p}`" for _, p in sorted(conv["oms"].items(), key=lambda kv: int(kv[0])))
        lines.append(f"| convert (atc) | done | {len(conv['oms'])} om(s) for {conv['soc_version']}: {oms} |")
    else:
        lines.append(f"| convert (atc) | skipped | {skipped.get('convert', 'not run')} |")
    results = context.get("results") or {}
    for backend in context["backends"]:
        if backend["status"] == "ran":
            result_file = results.get(backend["name"], "-")
            lines.append(f"| inference {backend['name']} | done | model `{backend['model']}`, device "
                         f"{backend['device']}, {backend['precision']}; results `{result_file}` |")
        else:
            lines.append(f"| inference {backend['name']} | skipped | {backend['reason']} |")
    lines.append("")
    return lines


def stages_lines(context: Dict[str, Any]) -> List[str]:
    lines = ["## Stages (reused on a re-run while their key is unchanged)", ""]
    lines.append("| stage | key | seconds when it ran |")
    lines.append("|---|---|---|")
    for stage in context.get("stages") or []:
        seconds = "-" if stage["seconds"] is None else f"{stage['seconds']:.1f}"
        lines.append(f"| {stage['name']} | `{(stage['key'] or '')[:12]}` | {seconds} |")
    lines.append("")
    return lines


def render_report(context: Dict[str, Any], plots: Optional[Sequence[Tuple[str, str]]] = None,
                  plots_skipped: Optional[str] = None,
                  detection_images: Optional[Sequence[Tuple[str, str]]] = None) -> str:
    """The text of report.md (deterministic for a given context)."""
    lines = header_lines(context)
    lines += steps_lines(context)
    lines += accuracy_lines(context)
    lines.append("")
    lines += perf_lines(context)
    lines.append("")
    lines += parity_lines(context)
    lines.append("")
    lines.append("## Plots")
    lines.append("")
    if plots_skipped:
        lines.append(f"Plots skipped: {plots_skipped.rstrip('.')}.")
    for title, rel in plots or []:
        lines.append(f"![{title}]({rel})")
        lines.append("")
    lines.append("")
    lines.append(f"### Detections drawn (ground truth green; detections red: those scoring >= {DRAW_MIN_SCORE}, "
                 f"at most {DETECTIONS_DRAWN}, or the top {DETECTIONS_DRAWN} when none does)")
    lines.append("")
    if detection_images:
        for title, rel in detection_images:
            lines.append(f"![{title}]({rel})")
            lines.append("")
    else:
        lines.append("No image drawn (no backend produced results).")
    lines.append("")
    lines += stages_lines(context)
    lines.append("Artifacts: `onnx/` (models + sidecars), `om/` (when atc ran), `infer/` (runner results), "
                 "`results_<backend>.json`, `metrics_<backend>.json`, `perf.json`, `parity.json`, `logs/`, "
                 "`stages.json`, `report_inputs.json`.")
    return "\n".join(lines) + "\n"


def write_report(run_dir: str, context: Dict[str, Any], image_set: Any = None) -> Dict[str, Any]:
    """Write report.md, the plots and the drawn detections; returns {"record", "outputs"}."""
    outputs = []
    plots = []
    plots_skipped = None
    ok, reason = plots_availability()
    plot_dir = os.path.join(run_dir, "plots")
    if not os.path.isdir(plot_dir):
        os.makedirs(plot_dir)
    if ok:
        path = os.path.join(plot_dir, "fps_by_batch.png")
        plot_fps(context, path)
        plots.append(("fps by batch size per device", "plots/fps_by_batch.png"))
        outputs.append(path)
        if context.get("metrics"):
            path = os.path.join(plot_dir, "per_class_ap.png")
            plot_per_class(context, path)
            plots.append(("per-class AP", "plots/per_class_ap.png"))
            outputs.append(path)
    else:
        plots_skipped = reason
    drawn = []
    results = context.get("results") or {}
    if results and image_set is not None:
        backend = sorted(results, key=lambda n: (n != "torch", n))[0]
        from .data import read_annotation_file
        from .results_json import read_results_json
        detections = read_results_json(os.path.join(run_dir, results[backend]))
        annotations = read_annotation_file(context["dataset"]["annotation_file"], need_annotations=True
                                           ).data["annotations"]
        for meta in image_set.metas[:DETECTION_IMAGES]:
            path = os.path.join(plot_dir, f"detections_{meta.image_id}.png")
            count = draw_detections(meta.path, [d for d in detections if d["image_id"] == meta.image_id],
                                    [a for a in annotations if a["image_id"] == meta.image_id], path)
            drawn.append((f"image {meta.image_id} ({backend}, {count} detections drawn)",
                          f"plots/detections_{meta.image_id}.png"))
            outputs.append(path)
    text = render_report(context, plots, plots_skipped, drawn)
    report_path = os.path.join(run_dir, REPORT_NAME)
    atomic_write_text(report_path, text)
    outputs.append(report_path)
    return {"record": {"plots": [rel for _, rel in plots], "plots_skipped": plots_skipped,
                       "detection_images": [rel for _, rel in drawn]}, "outputs": outputs}
