"""The report's pictures: fps by batch size, per-class AP, and images with their detections drawn.

Each plot states what its data is (the canvas the figures were measured at, how many classes have no
ground truth) from the data itself, and is laid out so that nothing covers anything else: the fps
legend sits outside the axes, every series has a colour of its own, and the labels drawn on an image
are placed where no other label is (place_labels).

The plots need matplotlib (the `plots` extra); the drawn images need only OpenCV.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .report_context import ReportContext
from .spec import coco_category_ids, coco_class_names, load_recipe_spec, performance_reference

DETECTIONS_DRAWN = 10
# Drawn: detections scoring at least this (a confident detector's boxes, not its 100 low-score candidates);
# when none does (seeded weights), the top DETECTIONS_DRAWN whatever their score.
DRAW_MIN_SCORE = 0.3
# Small images are drawn enlarged (by a whole factor) until their longer side reaches this, so that a
# label's text is legible at the size the report shows the image.
DRAWN_MIN_LONG_SIDE = 960
FPS_FIGURE_INCHES = (11.0, 5.5)
# the axes take the left part of the fps figure; the legend the rest, outside them
FPS_AXES_RIGHT = 0.60
DPI = 100

# BGR: detections red, ground truth drawn as a dark outline under light dashes (seen on any colour)
DETECTION_BGR = (0, 0, 230)
GT_DARK_BGR = (20, 20, 20)
GT_LIGHT_BGR = (255, 255, 255)
LABEL_TEXT_BGR = (255, 255, 255)


def new_figure(width, height):
    """(figure, axes) on an Agg canvas of their own, without pyplot: no global backend is chosen or
    switched, and nothing is left to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save_figure(fig, path):
    try:
        fig.savefig(path, dpi=DPI, metadata={"Software": None})
    except TypeError:  # matplotlib before 3.0 has no metadata argument
        fig.savefig(path, dpi=DPI)


# after tab10's ten: hues far from each of them and from each other (tab10's own second set, tab20's
# light variants, would repeat its hues)
EXTRA_COLOURS = ("#000000", "#000075", "#800000", "#f032e6", "#469990", "#b8860b")
# the marker of a measured series says its mode; the colour tells the series apart
MODE_MARKERS = {"e2e": "s", "inference": "^", "pure_inference": "D"}


def series_colours(count: int) -> List[Tuple[float, float, float, float]]:
    """`count` distinct colours: tab10, then EXTRA_COLOURS, then evenly spaced hues."""
    from matplotlib.colors import to_rgba
    tab10 = _colour_map("tab10")
    unique = [tuple(tab10(i)) for i in range(10)] + [to_rgba(c) for c in EXTRA_COLOURS]
    if count > len(unique):
        hsv = _colour_map("hsv")
        unique += [tuple(hsv(i / float(count))) for i in range(count - len(unique))]
    return unique[:count]


def _colour_map(name):
    import matplotlib
    registry = getattr(matplotlib, "colormaps", None)  # matplotlib >= 3.5; cm.get_cmap before (gone in 3.9)
    if registry is not None:
        return registry[name]
    from matplotlib import cm
    return cm.get_cmap(name)


# ----------------------------------------------------------------------------------------------
# fps by batch size


def measured_series(records: Sequence[Dict[str, Any]]) -> Dict[Tuple[str, str, str, str, str], Dict[int, float]]:
    """{(backend, mode, partial mark, device, precision): {batch: fps}}, a series per such key."""
    series = {}
    for record in records:
        partial = f" PARTIAL {record.get('images')}/{record.get('images_total')}" if record.get("partial") else ""
        key = (record["backend"], record["mode"], partial, record["device"], record["precision"])
        series.setdefault(key, {})[int(record["batch_size"])] = float(record["fps"])
    return series


def _series_label(key, devices):
    """'backend mode', with the device where the run measured on more than one."""
    backend, mode, partial, device, _ = key
    return f"{backend} {mode}{partial}" + (f" [{device}]" if len(devices) > 1 else "")


def fps_figure(context: ReportContext):
    """The fps-by-batch figure: the recipe's devices (solid) and this run's series (dashed, a marker per
    mode), log-log, a colour per series, the legend right of the axes; the title says which canvas each
    side ran at."""
    from .perf_gates import reference_records
    measured = sorted(measured_series(context.perf_records).items())
    devices = sorted({key[3] for key, _ in measured})
    series = [(f"{device} (recipe)", dict((r["batch_size"], r["fps"]) for r in reference_records()
                                          if r["device"] == device), dict(marker="o", linestyle="-"))
              for device in performance_reference()["devices"]]
    series += [(_series_label(key, devices), points, dict(marker=MODE_MARKERS.get(key[1], "s"), linestyle="--"))
               for key, points in measured]
    fig, ax = new_figure(*FPS_FIGURE_INCHES)
    for colour, (label, points, style) in zip(series_colours(len(series)), series):
        batches = sorted(points)
        ax.plot(batches, [points[b] for b in batches], color=colour, label=label, **style)
    _log_axes(ax)
    ax.set_title(fps_title(context), fontsize=10)
    fig.subplots_adjust(left=0.08, right=FPS_AXES_RIGHT, top=0.88, bottom=0.11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    return fig


def _log_axes(ax):
    from matplotlib.ticker import FuncFormatter, NullFormatter
    ax.set_xscale("log", base=2) if _has_base_kwarg() else ax.set_xscale("log", basex=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("batch size")
    ax.set_ylabel("fps (images/s)")
    ax.grid(True, which="both", alpha=0.3)


def fps_title(context: ReportContext) -> str:
    recipe_input = load_recipe_spec()["input"]
    h, w = context.canvas
    return (f"FSAF throughput by batch size\nrecipe (solid): published, input {recipe_input['height']}x"
            f"{recipe_input['width']}; this run (dashed): measured here, input {h}x{w}")


def plot_fps(context: ReportContext, path: str) -> None:
    fig = fps_figure(context)
    _save_figure(fig, path)


def _has_base_kwarg():
    import matplotlib
    parts = matplotlib.__version__.split(".")
    return (int(parts[0]), int(parts[1])) >= (3, 3)


# ----------------------------------------------------------------------------------------------
# per-class AP


def classes_with_ground_truth(metrics: Dict[str, Dict[str, Any]]) -> Tuple[List[str], int]:
    """(names of the classes with ground truth in the evaluated set, count of those without). A class
    without ground truth has AP None in every metrics record (COCOeval's -1)."""
    rows = next(iter(metrics.values()))["per_class"]
    with_gt = [row["name"] for row in rows if row["ap"] is not None]
    return with_gt, len(rows) - len(with_gt)


def per_class_title(metrics: Dict[str, Dict[str, Any]]) -> str:
    with_gt, without = classes_with_ground_truth(metrics)
    return (f"Per-class AP@[.50:.95] on the {len(with_gt)} classes with ground truth in this set\n"
            f"({without} of {len(with_gt) + without} classes have none and are not drawn)")


def per_class_figure(context: ReportContext):
    import numpy as np
    metrics = context.metrics
    backends = sorted(metrics, key=lambda n: (n != "torch", n))
    names, _ = classes_with_ground_truth(metrics)
    fig, ax = new_figure(min(16.0, max(7.0, 0.35 * len(names) * len(backends) + 3.0)), 5.0)
    width = 0.8 / max(1, len(backends))
    x = np.arange(len(names))
    colours = series_colours(len(backends))
    for k, backend in enumerate(backends):
        ap = dict((row["name"], row["ap"]) for row in metrics[backend]["per_class"])
        ax.bar(x + k * width, [ap[name] for name in names], width, label=backend, color=colours[k])
    ax.set_xticks(x + width * (len(backends) - 1) / 2.0)
    many = len(names) > 12
    ax.set_xticklabels(names, rotation=45 if many else 0, ha="right" if many else "center",
                       fontsize=8 if many else 10)
    ax.set_ylabel("AP@[.50:.95]")
    ax.set_title(per_class_title(metrics), fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8)
    fig.tight_layout()
    return fig


def plot_per_class(context: ReportContext, path: str) -> None:
    fig = per_class_figure(context)
    _save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Detections drawn on an image


@dataclass(frozen=True)
class Drawing:
    """What draw_detections drew: the detections, and each label's rectangle (x1, y1, x2, y2) in the
    drawn image's pixels (which is `scale` times the original's size)."""
    detections_drawn: int
    ground_truth_drawn: int
    scale: int
    label_boxes: Tuple[Tuple[int, int, int, int], ...]
    labels_not_placed: int


def _overlaps(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _candidates(anchor, size, canvas_hw, step):
    """Label positions (top-left) for a box `anchor` (x1, y1, x2, y2): just above and just below its
    corners first, then inside its top, then every place on the canvas, nearest to the box first."""
    x1, y1, x2, y2 = anchor
    tw, th = size
    near = [(x1, y1 - th), (x1, y2), (x2 - tw, y1 - th), (x2 - tw, y2), (x1, y1), (x2 - tw, y1)]
    yield from near
    height, width = canvas_hw
    grid = [(x, y) for y in range(0, max(1, height - th + 1), step) for x in range(0, max(1, width - tw + 1), step)]

    def gap(p):  # squared distance from the label's rectangle at p to the box: 0 where they touch
        return max(0, x1 - p[0] - tw, p[0] - x2) ** 2 + max(0, y1 - p[1] - th, p[1] - y2) ** 2
    yield from sorted(grid, key=gap)


def place_labels(anchors: Sequence[Tuple[int, int, int, int]], sizes: Sequence[Tuple[int, int]],
                 canvas_hw: Tuple[int, int]) -> List[Optional[Tuple[int, int, int, int]]]:
    """A rectangle per label, in order, inside the canvas and overlapping no earlier one; None for a
    label no free place is left for (the caller lists it instead)."""
    height, width = canvas_hw
    placed = []
    for anchor, (tw, th) in zip(anchors, sizes):
        chosen = None
        for x, y in _candidates(anchor, (tw, th), canvas_hw, max(2, th // 2)):
            x, y = min(max(0, x), max(0, width - tw)), min(max(0, y), max(0, height - th))
            rect = (x, y, x + tw, y + th)
            if rect[2] <= width and rect[3] <= height and not any(
                    other is not None and _overlaps(rect, other) for other in placed):
                chosen = rect
                break
        placed.append(chosen)
    return placed


def _dashed_rectangle(image, p1, p2, colour, thickness, dash):
    import cv2
    (x1, y1), (x2, y2) = p1, p2
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        for start in range(0, length, 2 * dash):
            end = min(length, start + dash)
            f0, f1 = start / float(max(1, length)), end / float(max(1, length))
            cv2.line(image, (int(ax + (bx - ax) * f0), int(ay + (by - ay) * f0)),
                     (int(ax + (bx - ax) * f1), int(ay + (by - ay) * f1)), colour, thickness, cv2.LINE_AA)


def _chosen_detections(detections, max_drawn):
    top = sorted(detections, key=lambda d: -d["score"])[:max_drawn]
    return [det for det in top if det["score"] >= DRAW_MIN_SCORE] or top


def draw_detections(image_path: str, detections: Sequence[Dict[str, Any]], ground_truth: Sequence[Dict[str, Any]],
                    out_path: str, max_drawn: int = DETECTIONS_DRAWN) -> Drawing:
    """The image (enlarged to DRAWN_MIN_LONG_SIDE) with its ground truth ('GT name', a dark outline under
    light dashes) and its top detections ('name score', red): those scoring >= DRAW_MIN_SCORE (at most
    `max_drawn`), or the top `max_drawn` when none does. No label covers another (place_labels)."""
    import cv2

    from .data import read_bgr
    names = dict(zip(coco_category_ids(), coco_class_names()))
    original = read_bgr(image_path)
    scale = max(1, -(-DRAWN_MIN_LONG_SIDE // max(original.shape[:2])))
    image = cv2.resize(original, (original.shape[1] * scale, original.shape[0] * scale),
                       interpolation=cv2.INTER_NEAREST)
    chosen = _chosen_detections(detections, max_drawn)
    items = [("GT " + names.get(a["category_id"], str(a["category_id"])), a["bbox"], None) for a in ground_truth]
    items += [(f"{names.get(d['category_id'], str(d['category_id']))} {d['score']:.2f}", d["bbox"], d)
              for d in chosen]
    boxes = [tuple(int(round(v * scale)) for v in (x, y, x + w, y + h)) for _, (x, y, w, h), _ in items]
    for (_, _, det), (x1, y1, x2, y2) in zip(items, boxes):
        if det is None:
            cv2.rectangle(image, (x1, y1), (x2, y2), GT_DARK_BGR, 4)
            _dashed_rectangle(image, (x1, y1), (x2, y2), GT_LIGHT_BGR, 2, 8)
        else:
            cv2.rectangle(image, (x1, y1), (x2, y2), DETECTION_BGR, 2)
    label_boxes = _draw_labels(image, items, boxes)
    if not cv2.imwrite(out_path, image, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        from .errors import DataError
        raise DataError(f"OpenCV failed to write {out_path}")
    return Drawing(len(chosen), len(ground_truth), scale, tuple(label_boxes), len(items) - len(label_boxes))


def _draw_labels(image, items, boxes):
    """Each item's text on a filled box where place_labels puts it, with a leader line when it is not
    at its box; returns the rectangles drawn."""
    import cv2
    font, font_scale, pad = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 3
    sizes = []
    for text, _, _ in items:
        (tw, th), base = cv2.getTextSize(text, font, font_scale, 1)
        sizes.append((tw + 2 * pad, th + base + 2 * pad))
    rects = place_labels(boxes, sizes, image.shape[:2])
    drawn = []
    for (text, _, det), box, rect in zip(items, boxes, rects):
        if rect is None:
            continue
        fill = GT_DARK_BGR if det is None else DETECTION_BGR
        reach = rect[3] - rect[1]  # a label within a label's height of its box needs no leader line
        if not _overlaps(rect, (box[0] - reach, box[1] - reach, box[2] + reach, box[3] + reach)):
            cv2.line(image, (rect[0], rect[1]), (box[0], box[1]), fill, 1, cv2.LINE_AA)
        cv2.rectangle(image, (rect[0], rect[1]), (rect[2] - 1, rect[3] - 1), fill, -1)
        cv2.putText(image, text, (rect[0] + pad, rect[3] - pad - 3), font, font_scale, LABEL_TEXT_BGR, 1,
                    cv2.LINE_AA)
        drawn.append(rect)
    return drawn
