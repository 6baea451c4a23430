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
import json
import os
import re

from .spec import accuracy_reference, coco_category_ids, coco_class_names, load_recipe_spec, performance_reference

REPORT_NAME = "report.md"
DETECTION_IMAGES = 3
DETECTIONS_DRAWN = 10
NOT_APPLICABLE_EMBEDDED = "not applicable (seeded weights / generated data)"


def plots_availability():
    """(True, "") when matplotlib can draw here, else (False, the reason)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError as exc:
        return False, (f"matplotlib is not installed ({exc}); install the `plots` extra "
                       "(pip install 'fsaf-repro[plots]') to get the PNG plots")
    except Exception as exc:  # a broken matplotlib install (backend, fonts) must not stop the report
        return False, f"matplotlib failed to load ({type(exc).__name__}: {exc})"
    return True, ""


# ----------------------------------------------------------------------------------------------
# Accuracy


def full_dataset_images():
    """The number of images of the recipe's evaluation set, read from spec accuracy.dataset."""
    match = re.search(r"(\d+) images", accuracy_reference()["dataset"])
    if not match:
        from .errors import SpecError
        raise SpecError("spec accuracy.dataset does not state its number of images: {!r}".format(
            accuracy_reference()["dataset"]))
    return int(match.group(1))


def accuracy_verdict(ap, context):
    """The recipe's verdict (mAP >= min_map and within max_drop of the PyTorch value) where it applies."""
    acc = accuracy_reference()
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
            return "smoke run of {} images: {} (mAP {:.3f} vs smoke minimum {}); not the recipe's claim".format(
                dataset["num_images"], "PASS" if ap >= smoke_min else "FAIL", ap, smoke_min)
        return "not applicable (partial run: {} of {} images; the claim needs all {})".format(
            dataset["num_images"], dataset["total_images"], full)
    passed = ap >= min_map and round(ref - ap, 6) <= drop
    return "{} (mAP {:.3f} {} {}; drop vs PyTorch {:.3f}: {:.3f} {} {})".format(
        "PASS" if passed else "FAIL", ap, ">=" if ap >= min_map else "<", min_map, ref, ref - ap,
        "<=" if round(ref - ap, 6) <= drop else ">", drop)


def accuracy_lines(context):
    acc = accuracy_reference()
    names = acc["stat_names"]
    metrics = context.get("metrics") or {}
    backends = sorted(metrics, key=lambda n: (n != "torch", n))
    lines = ["## Accuracy (recipe section 6)", ""]
    if not backends:
        lines.append("No backend produced results: no accuracy table.")
        return lines
    first = metrics[backends[0]]
    lines.append("COCO bbox, {} ({} images, {} scorer, annotations sha256 `{}`), score threshold {}.".format(
        "generated COCO-format set" if context.get("generated") else "val2017", first["num_images"],
        first["scorer"], first["annotation_sha256"][:16], context.get("score_threshold")))
    lines.append("")
    header = ["#", "stat"] + [f"{b} (measured)" for b in backends] + [
        "PyTorch reference (recipe 6.2)", "om on 310 reference (recipe 6.1)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    for i, name in enumerate(names):
        cells = [str(i + 1), name] + ["{:.3f}".format(metrics[b]["stats"][i]) for b in backends]
        cells += ["{:.3f}".format(acc["pytorch_stats"]["values"][i]), "{:.3f}".format(acc["npu_stats"]["values"][i])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Verdict (mAP >= {} and within {} of PyTorch {}; {}, {}):".format(
        acc["min_map"]["value"], acc["max_drop_vs_pytorch"]["value"], acc["pytorch_map"]["value"],
        acc["min_map"]["source"], acc["max_drop_vs_pytorch"]["source"]))
    lines.append("")
    for b in backends:
        lines.append("- {}: {}".format(b, accuracy_verdict(metrics[b]["stats"][0], context)))
    return lines


# ----------------------------------------------------------------------------------------------
# Throughput


def _column_label(record):
    return "{} {} {} {}".format(record["device"], record["backend"], record["precision"], record["mode"])


def measured_columns(records):
    """Measured records grouped per (device, backend, precision, mode, chips): {label: {batch: record}}."""
    columns = {}
    for record in records:
        label = _column_label(record)
        columns.setdefault(label, {})[int(record["batch_size"])] = record
    return columns


def perf_lines(context):
    from .perf import (MODE_DEFINITIONS, best_batch, compare_records, compare_to_reference, evaluate_gates,
                       format_gates, reference_records)
    perf = performance_reference()
    reference = reference_records()
    ref_cells = dict(((r["device"], r["batch_size"]), r) for r in reference)
    devices = list(perf["devices"])
    measured = list(context.get("perf_records") or [])
    columns = measured_columns(measured)
    batch_rows = sorted(set(int(b) for b in perf["batch_sizes"]) | set(
        int(r["batch_size"]) for r in measured))
    ratio_defs = [(g["numerator"], g["denominator"]) for g in perf["gates"]]
    header = ["batch"] + devices + [f"{n}/{d}" for n, d in ratio_defs] + [
        f"{label} (measured)" for label in sorted(columns)]
    lines = ["## Throughput (recipe section 7.1)", ""]
    lines.append("fps by batch size. Reference columns: {} ({}); empty cells in the recipe are out of device "
                 "memory. Measured columns: this run{}.".format(
                     perf["source"], perf["unit"],
                     "" if not context.get("canvas") else " at input {}x{}".format(*context["canvas"])))
    lines.append("")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")

    def fmt(value, digits=4):
        return "-" if value is None else "{:.{d}f}".format(value, d=digits)

    for bs in batch_rows:
        cells = [f"bs{bs}"]
        for device in devices:
            ref = ref_cells.get((device, bs))
            cells.append(fmt(ref["fps"]) if ref else ("OOM" if str(bs) in perf["table"][device] else "-"))
        for num, den in ratio_defs:
            a, b = ref_cells.get((num, bs)), ref_cells.get((den, bs))
            cells.append(fmt(compare_records(a, b)["ratio"]) if a and b else "-")
        for label in sorted(columns):
            record = columns[label].get(bs)
            cells.append(fmt(record["fps"], 3) if record else "-")
        lines.append("| " + " | ".join(cells) + " |")
    best_cells = ["best batch"]
    bests = {}
    for device in devices:
        bests[device] = best_batch([r for r in reference if r["device"] == device])
        best_cells.append("{} (bs{})".format(fmt(bests[device]["fps"]), bests[device]["batch_size"])
                          if bests[device] else "-")
    for num, den in ratio_defs:
        if bests.get(num) and bests.get(den):
            best_cells.append(fmt(compare_records(bests[num], bests[den])["ratio"]))
        else:
            best_cells.append("-")
    for label in sorted(columns):
        top = best_batch(list(columns[label].values()))
        best_cells.append("{} (bs{})".format(fmt(top["fps"], 3), top["batch_size"]) if top else "-")
    lines.append("| " + " | ".join(best_cells) + " |")
    lines.append("")
    lines.append("The ratio columns are computed from the per-batch reference rows. The recipe prints a "
                 "`310P/T4` column whose values equal 310P_aoe/T4. {}".format(perf["published_best_batch_note"]))
    lines.append("")
    lines.append("### Gates on the recipe's table")
    lines.append("")
    lines.append("```")
    lines.append(format_gates(evaluate_gates(reference, mode="inference")))
    lines.append("```")
    lines.append("")
    lines.append("### Gates on the measured records")
    lines.append("")
    gate_devices = set()
    for g in perf["gates"]:
        gate_devices.update([g["numerator"], g["denominator"]])
    measured_devices = sorted(set(r["device"] for r in measured))
    if not measured:
        lines.append("No throughput was measured in this run.")
    elif not gate_devices & set(measured_devices):
        lines.append("Not evaluated: this run measured device(s) {} only; the gates compare {} (give records "
                     "measured on those devices with --extra-perf, or run on an NPU host).".format(
                         ", ".join(measured_devices), ", ".join(sorted(gate_devices))))
    else:
        lines.append("```")
        for mode in sorted(set(r["mode"] for r in measured)):
            lines.append(f"[{mode} records]")
            lines.append(format_gates(evaluate_gates(measured, mode=mode)))
        lines.append("```")
    lines.append("")
    lines.append("### Measured records against the reference cells")
    lines.append("")
    if measured:
        lines.append("| measured | batch | fps | reference fps | ratio | caveats |")
        lines.append("|---|---|---|---|---|---|")
        for row in compare_to_reference(measured):
            m = row["measured"]
            lines.append("| {} | {} | {:.3f} | {} | {} | {} |".format(
                _column_label(m), m["batch_size"], m["fps"],
                fmt(row["reference"]["fps"]) if row["reference"] else "-",
                fmt(row["ratio"], 3) if row["ratio"] is not None else "not ratioed",
                "; ".join(row["caveats"]) or "-"))
        lines.append("")
    lines.append("Modes:")
    lines.append("")
    for mode in sorted(set(["inference"] + [r["mode"] for r in measured])):
        lines.append(f"- {mode}: {MODE_DEFINITIONS[mode]}")
    return lines


# ----------------------------------------------------------------------------------------------
# Parity


def parity_lines(context):
    lines = ["## Stage parity (torch vs ONNX Runtime vs om)", ""]
    parity = context.get("parity")
    if not parity:
        reason = (context.get("skipped_steps") or {}).get("parity", "not run")
        lines.append(f"Not run: {reason}.")
        return lines
    tol = parity["tolerances"]
    lines.append("The same batch of {} images (ids {}) through each stage, padded outputs compared (rows paired "
                 "by label and closeness; score-0 rows are padding). Tolerances (spec `parity`): fp32 boxes "
                 "{} px, scores {}; fp16 om boxes {} px, scores {}, match rate >= {}.".format(
                     len(parity["image_ids"]), ", ".join(str(i) for i in parity["image_ids"]),
                     tol["box_abs_tol_px"], tol["score_abs_tol"], tol["fp16_om_box_abs_tol_px"],
                     tol["fp16_om_score_abs_tol"], tol["fp16_om_min_match_rate"]))
    lines.append("")
    lines.append("| reference | compared | detections (ref / other) | max abs diff dets boxes (px) | "
                 "max abs diff dets scores | labels agreement | match rate IoU >= {} | mAP delta | within "
                 "tolerance |".format(tol["match_iou"]))
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for pair in parity["pairs"]:
        delta = pair.get("map_delta")
        lines.append("| {} | {} | {} / {} | {:.3g} | {:.3g} | {:.1%} | {:.1%} | {} | {} |".format(
            pair["reference"], pair["other"], pair["detections_ref"], pair["detections_other"],
            pair["max_box_abs_diff"], pair["max_score_abs_diff"], pair["label_agreement"], pair["match_rate"],
            "n/a (not run over the data set)" if delta is None else f"{delta:+.4f}",
            "yes ({})".format(pair["tolerance"]) if pair["within_tolerance"] else "NO ({})".format(pair["tolerance"])))
    om_rows = [p for p in parity["pairs"] if "(om" in p["other"]]
    if not om_rows:
        lines.append("")
        lines.append("No om row: {}.".format((context.get("skipped_steps") or {}).get(
            "convert", "no om backend ran")))
    return lines


# ----------------------------------------------------------------------------------------------
# Plots and drawn detections


def _save_figure(fig, path):
    try:
        fig.savefig(path, dpi=100, metadata={"Software": None})
    except TypeError:  # matplotlib before 3.0 has no metadata argument
        fig.savefig(path, dpi=100)


def plot_fps(context, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .perf import reference_records
    fig, ax = plt.subplots(figsize=(8, 5))
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
    plt.close(fig)


def _has_base_kwarg():
    import matplotlib
    parts = matplotlib.__version__.split(".")
    return (int(parts[0]), int(parts[1])) >= (3, 3)


def plot_per_class(context, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = context.get("metrics") or {}
    backends = sorted(metrics, key=lambda n: (n != "torch", n))
    names = [row["name"] for row in metrics[backends[0]]["per_class"]]
    fig, ax = plt.subplots(figsize=(16, 5))
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
    plt.close(fig)


def draw_detections(image_path, detections, ground_truth, out_path, max_drawn=DETECTIONS_DRAWN):
    """The original image with ground truth (green) and the top detections (red, 'name score') drawn."""
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
    for det in top:
        x, y, w, h = det["bbox"]
        p1, p2 = (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h)))
        cv2.rectangle(image, p1, p2, (0, 0, 230), thickness)
        text = "{} {:.2f}".format(names.get(det["category_id"], str(det["category_id"])), det["score"])
        cv2.putText(image, text, (p1[0], max(10, p1[1] - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 230), 1,
                    cv2.LINE_AA)
    if not cv2.imwrite(out_path, image):
        from .errors import DataError
        raise DataError(f"OpenCV failed to write {out_path}")
    return len(top)


# ----------------------------------------------------------------------------------------------
# The report


def header_lines(context):
    ckpt = context["checkpoint"]
    data = context["dataset"]
    h, w = context["canvas"]
    lines = ["# FSAF R50-FPN reproduction report", ""]
    if context.get("embedded"):
        lines.append("**Embedded default run: the weights are seeded (random, calibrated), not trained, and the "
                     "images are generated, not COCO val2017. Its mAP is NOT the recipe's claim** (recipe: "
                     "{} PyTorch, {} om on 310). It shows every step working on this host, at a reduced input "
                     "size of {}x{} (the recipe's is {}x{}) on {} generated images.".format(
                         accuracy_reference()["pytorch_map"]["value"], accuracy_reference()["om_310_map"]["value"],
                         h, w, load_recipe_spec()["input"]["height"], load_recipe_spec()["input"]["width"],
                         data["num_images"]))
    else:
        if context.get("seeded"):
            lines.append("**The weights are seeded, not trained: the mAP below is NOT the recipe's claim.**")
        if context.get("generated"):
            lines.append("**The images are generated, not COCO val2017: the mAP below is NOT the recipe's claim.**")
    lines.append("")
    lines.append("What was run: checkpoint `{}`{} (sha256 `{}`); {} images from {} (annotations sha256 `{}`{}); "
                 "input {}x{}; backends run: {}; batch sizes {} (dataset inference at batch size {}).".format(
                     os.path.basename(ckpt["path"]), " (seeded weights in the official layout)" if ckpt["seeded"]
                     else "", ckpt["sha256"][:16], data["num_images"],
                     "the generated set" if data["generated"] else "`{}`".format(data["image_dir"]),
                     data["annotation_sha256"][:16],
                     "" if data["num_images"] == data["total_images"] else ", first {} of {} by id".format(
                         data["num_images"], data["total_images"]),
                     h, w, ", ".join(b["name"] for b in context["backends"] if b["status"] == "ran") or "none",
                     ", ".join(str(b) for b in context["batch_sizes"]), context["infer_batch_size"]))
    if context.get("threads"):
        lines.append("")
        lines.append("CPU runtimes (torch, ONNX Runtime) ran with {} intra-op thread(s) over the data set (a core "
                     "left to the image loader) and {} in the pure-inference timing.".format(
                         context["threads"], context.get("perf_threads") or "their default number of"))
    if not ckpt["seeded"]:
        prefix = load_recipe_spec()["checkpoint"]["sha256_prefix"]
        if not ckpt["sha256"].startswith(prefix):
            lines.append("")
            lines.append("Note: the checkpoint's sha256 does not start with {} (the official {}).".format(
                prefix, load_recipe_spec()["checkpoint"]["file_name"]))
    lines.append("")
    return lines


def steps_lines(context):
    lines = ["## Steps", ""]
    lines.append("| step | status | detail |")
    lines.append("|---|---|---|")
    export = (context.get("export") or {}).get("flavours", {})
    for flavour in sorted(export):
        item = export[flavour]
        lines.append("| export {} | done | `{}`; outputs {}; {} |".format(
            flavour, item["file"], ", ".join("{} {}".format(o["name"], o["shape"]) for o in item["outputs"]),
            item["checker"]))
    skipped = context.get("skipped_steps") or {}
    if context.get("convert"):
        conv = context["convert"]
        lines.append("| convert (atc) | done | {} om(s) for {}: {} |".format(
            len(conv["oms"]), conv["soc_version"], ", ".join(f"`{p}`" for _, p in sorted(
                conv["oms"].items(), key=lambda kv: int(kv[0])))))
    else:
        lines.append("| convert (atc) | skipped | {} |".format(skipped.get("convert", "not run")))
    for backend in context["backends"]:
        if backend["status"] == "ran":
            lines.append("| inference {} | done | model `{}`, device {}, {}; results `{}` |".format(
                backend["name"], backend["model"], backend["device"], backend["precision"],
                (context.get("results") or {}).get(backend["name"], "-")))
        else:
            lines.append("| inference {} | skipped | {} |".format(backend["name"], backend["reason"]))
    lines.append("")
    return lines


def stages_lines(context):
    lines = ["## Stages (reused on a re-run while their key is unchanged)", ""]
    lines.append("| stage | key | seconds when it ran |")
    lines.append("|---|---|---|")
    for stage in context.get("stages") or []:
        lines.append("| {} | `{}` | {} |".format(stage["name"], (stage["key"] or "")[:12],
                                               "-" if stage["seconds"] is None else "{:.1f}".format(stage["seconds"])))
    lines.append("")
    return lines


def render_report(context, plots=None, plots_skipped=None, detection_images=None):
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
        lines.append("Plots skipped: {}.".format(plots_skipped.rstrip(".")))
    for title, rel in plots or []:
        lines.append(f"![{title}]({rel})")
        lines.append("")
    lines.append("")
    lines.append(f"### Detections drawn (ground truth green, top {DETECTIONS_DRAWN} detections red)")
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


def write_report(run_dir, context, image_set=None):
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
        with open(os.path.join(run_dir, results[backend])) as handle:
            detections = json.load(handle)
        with open(context["dataset"]["annotation_file"]) as handle:
            annotations = json.load(handle).get("annotations", [])
        for meta in image_set.metas[:DETECTION_IMAGES]:
            path = os.path.join(plot_dir, f"detections_{meta.image_id}.png")
            count = draw_detections(meta.path, [d for d in detections if d["image_id"] == meta.image_id],
                                    [a for a in annotations if a["image_id"] == meta.image_id], path)
            drawn.append((f"image {meta.image_id} ({backend}, {count} detections drawn)",
                          f"plots/detections_{meta.image_id}.png"))
            outputs.append(path)
    text = render_report(context, plots, plots_skipped, drawn)
    report_path = os.path.join(run_dir, REPORT_NAME)
    tmp = report_path + ".part"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, report_path)
    outputs.append(report_path)
    return {"record": {"plots": [rel for _, rel in plots], "plots_skipped": plots_skipped,
                       "detection_images": [rel for _, rel in drawn]}, "outputs": outputs}
