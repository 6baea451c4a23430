"""Synthetic COCO-format datasets: real image files with drawn objects and an instances json.

For tests and for the embedded default run when COCO val2017 is absent. The json carries COCO's real
80 categories with their real ids (spec), the images are real JPEG/PNG files of mixed sizes and
aspect ratios (landscape, portrait, tiny, very wide, very tall, grayscale), listed in the json in
shuffled order with gaps in the ids, so consumers must sort by id themselves. Deterministic for a
given seed. A generated set is never reported as COCO: its annotation sha256 differs.
"""
import json
import os
import random

import cv2
import numpy as np

from .data.coco import ANNOTATION_DIR, ANNOTATION_FILE_NAME, IMAGE_DIR_NAME
from .errors import DataError
from .fileio import atomic_write_text
from .spec import coco_category_ids, coco_class_names

# (width, height, format) cycled over the images; format "gray" is a single-channel JPEG.
DEFAULT_LAYOUTS = (
    (640, 480, "jpg"),
    (480, 640, "jpg"),      # portrait
    (320, 240, "gray"),     # grayscale JPEG, as some COCO images are
    (24, 18, "png"),        # tiny: upscaled ~44x by the recipe's transform
    (1500, 120, "jpg"),     # very wide
    (500, 375, "png"),
    (120, 900, "jpg"),      # very tall
    (1216, 800, "jpg"),     # exactly the canvas: scale 1
)

_SUPERCATEGORY = "synthetic"
# info.description of every generated annotation file: what make-dataset may write over
GENERATED_DESCRIPTION = "fsaf-repro synthetic COCO-format dataset (not COCO)"


def _background(rng, height, width):
    # a smooth gradient plus mild noise: compresses like a photo, not like a flat test pattern
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    tilt = rng.uniform(-60, 60, size=(2, 3)).astype(np.float32)
    img = base[None, None, :] + ys[..., None] * tilt[0] + xs[..., None] * tilt[1]
    img = img + rng.normal(0, 6, size=(height, width, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_objects(rng, img, max_objects, num_classes):
    height, width = img.shape[:2]
    objects = []
    count = int(rng.randint(1, max_objects + 1))
    for _ in range(count):
        # log-uniform sides, so COCO's small (< 32^2), medium and large ranges all get objects
        min_side = max(2, min(width, height) // 40)
        sides = []
        for extent in (width, height):
            top = max(min_side + 1, extent * 2 // 3)
            sides.append(int(np.exp(rng.uniform(np.log(min_side), np.log(top)))))
        box_w, box_h = max(2, min(sides[0], width - 1)), max(2, min(sides[1], height - 1))
        x = int(rng.randint(0, max(1, width - box_w)))
        y = int(rng.randint(0, max(1, height - box_h)))
        colour = tuple(int(v) for v in rng.randint(0, 256, size=3))
        if rng.rand() < 0.5:
            cv2.rectangle(img, (x, y), (x + box_w - 1, y + box_h - 1), colour, thickness=-1)
            area = float(box_w * box_h)
        else:
            cv2.ellipse(img, (x + box_w // 2, y + box_h // 2), (max(1, box_w // 2), max(1, box_h // 2)),
                        0, 0, 360, colour, thickness=-1)
            area = float(np.pi * box_w * box_h / 4.0)
        objects.append((int(rng.randint(0, num_classes)), [float(x), float(y), float(box_w), float(box_h)],
                        area))
    return objects


# style="classes": a learnable task. Each class looks like itself: a shape, a colour (BGR, jittered per
# object) and a texture; the names are real COCO classes, so the json keeps the real ids. Grayscale
# images keep shape and texture (and brightness) only.
CLASS_STYLES = (
    ("person", "ellipse", (40, 40, 220), "solid"),
    ("car", "rectangle", (200, 70, 30), "solid"),
    ("traffic light", "rectangle", (40, 190, 40), "stripes"),
    ("stop sign", "diamond", (30, 210, 230), "solid"),
    ("sports ball", "ellipse", (20, 120, 240), "checker"),
    ("frisbee", "ring", (200, 40, 200), "solid"),
    ("clock", "triangle", (210, 200, 40), "solid"),
    ("book", "rectangle", (235, 235, 235), "checker"),
)
GENERATOR_STYLES = ("default", "classes")
# the canvas the classes style sizes its objects for (the embedded default run's input, reproduce.py)
CLASSES_CANVAS_HW = (256, 384)


def _texture(rng, img_patch, colour, texture):
    """Fill `img_patch` (a view) with `colour` and its texture: stripes/checker alternate with a darker tone."""
    img_patch[...] = colour
    if texture == "solid":
        return
    height, width = img_patch.shape[:2]
    period = max(2, int(min(height, width) // int(rng.randint(3, 6))))
    ys = (np.arange(height) // period)[:, None]
    xs = (np.arange(width) // period)[None, :]
    pattern = (ys + 0 * xs) % 2 == 1 if texture == "stripes" else (ys + xs) % 2 == 1
    dark = tuple(int(v * 0.35) for v in colour)
    img_patch[pattern] = dark


def _shape_mask(shape, box_w, box_h):
    """uint8 mask [box_h, box_w] of the class shape inscribed in its box."""
    mask = np.zeros((box_h, box_w), np.uint8)
    centre = (box_w // 2, box_h // 2)
    axes = (max(1, box_w // 2), max(1, box_h // 2))
    if shape == "rectangle":
        mask[...] = 1
    elif shape == "ellipse":
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, thickness=-1)
    elif shape == "ring":
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, thickness=-1)
        inner = (max(1, box_w // 4), max(1, box_h // 4))
        cv2.ellipse(mask, centre, inner, 0, 0, 360, 0, thickness=-1)
    elif shape == "diamond":
        points = np.array([[box_w // 2, 0], [box_w - 1, box_h // 2], [box_w // 2, box_h - 1], [0, box_h // 2]],
                          np.int32)
        cv2.fillPoly(mask, [points], 1)
    elif shape == "triangle":
        points = np.array([[box_w // 2, 0], [box_w - 1, box_h - 1], [0, box_h - 1]], np.int32)
        cv2.fillPoly(mask, [points], 1)
    else:
        raise DataError(f"unknown class shape {shape!r}")
    return mask


def _draw_class_objects(rng, img, max_objects, class_labels, min_canvas_side=8.0, max_cover=0.4):
    """Objects of `class_labels` (indices into COCO's 80) drawn with their class's look.

    Sizes are log-uniform from `min_canvas_side` pixels on the CLASSES_CANVAS_HW canvas (the recipe's
    keep-ratio scale) to 0.6 of the image's extent, aspect ratios log-uniform in [1/3, 3]. Later
    objects occlude earlier ones, but a placement covering more than `max_cover` of an earlier box
    is retried, so every object stays mostly visible.
    """
    height, width = img.shape[:2]
    scale = min(float(CLASSES_CANVAS_HW[1]) / width, float(CLASSES_CANVAS_HW[0]) / height)
    names = coco_class_names()
    styles = {names.index(name): (shape, colour, texture) for name, shape, colour, texture in CLASS_STYLES}
    min_side = max(2.0, min_canvas_side / scale)
    objects = []
    count = int(rng.randint(1, max_objects + 1))
    for _ in range(count):
        label = int(class_labels[int(rng.randint(0, len(class_labels)))])
        shape, colour, texture = styles[label]
        for _attempt in range(10):
            top = max(min_side * 1.5, 0.6 * min(width, height))
            side = float(np.exp(rng.uniform(np.log(min_side), np.log(top))))
            ratio = float(np.exp(rng.uniform(np.log(1 / 3.0), np.log(3.0))))
            box_w = int(np.clip(side * np.sqrt(ratio), 2, width - 1))
            box_h = int(np.clip(side / np.sqrt(ratio), 2, height - 1))
            x = int(rng.randint(0, max(1, width - box_w)))
            y = int(rng.randint(0, max(1, height - box_h)))
            if all(_covered_fraction((x, y, box_w, box_h), bbox) <= max_cover for _, bbox, _ in objects):
                break
        else:
            continue
        jitter = rng.randint(-25, 26, size=3)
        tone = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter))
        patch = np.empty((box_h, box_w, 3), np.uint8)
        _texture(rng, patch, tone, texture)
        mask = _shape_mask(shape, box_w, box_h).astype(bool)
        img[y:y + box_h, x:x + box_w][mask] = patch[mask]
        objects.append((label, [float(x), float(y), float(box_w), float(box_h)], float(mask.sum())))
    return objects


def _covered_fraction(new_box, old_box):
    """The fraction of `old_box` (x, y, w, h) that `new_box` covers."""
    x1, y1 = max(new_box[0], old_box[0]), max(new_box[1], old_box[1])
    x2 = min(new_box[0] + new_box[2], old_box[0] + old_box[2])
    y2 = min(new_box[1] + new_box[3], old_box[1] + old_box[3])
    return max(0.0, x2 - x1) * max(0.0, y2 - y1) / float(old_box[2] * old_box[3])


def class_style_labels():
    """Indices (0..79) of the classes the classes style draws, in CLASS_STYLES order."""
    names = coco_class_names()
    return [names.index(name) for name, _, _, _ in CLASS_STYLES]


def coco_categories():
    """The 80 COCO categories with their real ids, in COCO's order (spec)."""
    return [{"id": cid, "name": name, "supercategory": _SUPERCATEGORY}
            for cid, name in zip(coco_category_ids(), coco_class_names())]


def _check_generator_args(num_images, style):
    if int(num_images) < 1:
        raise DataError(f"num_images must be >= 1, got {num_images}")
    if style not in GENERATOR_STYLES:
        raise DataError("unknown generator style {!r}; choose one of {}".format(style, ", ".join(GENERATOR_STYLES)))


def _make_dirs(*paths):
    for path in paths:
        if not os.path.isdir(path):
            os.makedirs(path)


def _objects_for(rng, img, max_objects, style):
    """Draw the objects of `style` on `img` (in place); their (label, bbox, area) list."""
    if style == "classes":
        return _draw_class_objects(rng, img, max_objects, class_style_labels())
    return _draw_objects(rng, img, max_objects, len(coco_category_ids()))


def _write_image(path, img, kind):
    """Write `img` (BGR) as `kind`'s file: a JPEG at quality 92, grayscale for "gray", or a PNG."""
    if kind == "gray":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    params = [int(cv2.IMWRITE_JPEG_QUALITY), 92] if path.endswith(".jpg") else []
    if not cv2.imwrite(path, img, params):
        raise DataError(f"OpenCV failed to write {path}")


def _generate_image(rng, image_dir, image_id, layout, max_objects, style, write_images):
    """One image: its json entry and its objects; the image file too when `write_images`."""
    width, height, kind = layout
    file_name = "{:012d}.{}".format(image_id, "png" if kind == "png" else "jpg")
    if write_images:
        img = _background(rng, height, width)
        objects = _objects_for(rng, img, max_objects, style)
        _write_image(os.path.join(image_dir, file_name), img, kind)
    else:
        objects = _objects_for(rng, np.zeros((height, width, 3), np.uint8), max_objects, style)
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}, objects


def _annotation(ann_id, image_id, category_id, bbox, area):
    x, y, w, h = bbox
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id,
        "bbox": bbox, "area": area, "iscrowd": 0,
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
    }


def _dump_json_atomically(dataset, path):
    atomic_write_text(path, json.dumps(dataset))


def make_synthetic_coco(out_dir, num_images=8, seed=0, layouts=None, max_objects=4, write_images=True,
                        annotation_name=ANNOTATION_FILE_NAME, image_dir_name=IMAGE_DIR_NAME, style="default"):
    """Generate a dataset under `out_dir`; returns (annotation_file, image_dir).

    `out_dir/annotations/<annotation_name>` and `out_dir/<image_dir_name>/<12-digit id>.jpg|png`.
    `write_images=False` writes only the json (for scoring benchmarks that never read pixels).
    `style="default"`: objects of random colour and any of the 80 classes (a class is not visible in
    the image). `style="classes"`: the learnable task of CLASS_STYLES, whose class shows in the image
    (fsaf_repro.train fits weights on it); same layouts, backgrounds and json layout.
    """
    _check_generator_args(num_images, style)
    layouts = list(layouts or DEFAULT_LAYOUTS)
    rng = np.random.RandomState(seed)
    out_dir = os.fspath(out_dir)
    image_dir = os.path.join(out_dir, image_dir_name)
    ann_dir = os.path.join(out_dir, ANNOTATION_DIR)
    _make_dirs(image_dir, ann_dir)
    category_ids = coco_category_ids()
    images, annotations = [], []
    image_id = 0
    for number in range(int(num_images)):
        image_id += int(rng.randint(1, 40))  # gaps, like val2017's ids
        image, objects = _generate_image(rng, image_dir, image_id, layouts[number % len(layouts)], max_objects,
                                         style, write_images)
        images.append(image)
        for label, bbox, area in objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, category_ids[label], bbox, area))
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)  # json order != id order: readers must sort
    dataset = {
        "info": dict({"description": GENERATED_DESCRIPTION, "seed": seed},
                     **({"style": style} if style != "default" else {})),
        "licenses": [],
        "images": [images[i] for i in order],
        "annotations": annotations,
        "categories": coco_categories(),
    }
    annotation_file = os.path.join(ann_dir, annotation_name)
    _dump_json_atomically(dataset, annotation_file)
    return annotation_file, image_dir


def make_synthetic_results(annotation_file, per_image=100, seed=0, jitter=0.1):
    """Plausible detections for every image of `annotation_file`: jittered ground truth plus clutter.

    Each image gets exactly `per_image` results: its ground-truth boxes moved by up to `jitter` of
    their size (with a high score), the rest random boxes of random classes (lower scores).
    """
    from .data import read_annotation_file
    data = read_annotation_file(annotation_file, need_annotations=True).data
    rng = np.random.RandomState(seed)
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    category_ids = [c["id"] for c in data["categories"]]
    results = []
    for image in sorted(data["images"], key=lambda item: item["id"]):
        width, height = image["width"], image["height"]
        gts = by_image.get(image["id"], [])[:per_image]
        for ann in gts:
            x, y, w, h = ann["bbox"]
            dx, dy = rng.uniform(-jitter, jitter, size=2) * (w, h)
            sw, sh = np.exp(rng.uniform(-jitter, jitter, size=2))
            cat = ann["category_id"] if rng.rand() > 0.1 else int(rng.choice(category_ids))
            results.append({"image_id": image["id"], "category_id": int(cat),
                            "bbox": [float(x + dx), float(y + dy), float(w * sw), float(h * sh)],
                            "score": float(rng.uniform(0.3, 1.0))})
        extra = per_image - len(gts)
        if extra > 0:
            ws = rng.uniform(2, max(3, width / 2.0), size=extra)
            hs = rng.uniform(2, max(3, height / 2.0), size=extra)
            xs = rng.uniform(0, width, size=extra) - ws / 2
            ys = rng.uniform(0, height, size=extra) - hs / 2
            cats = rng.choice(category_ids, size=extra)
            scores = rng.uniform(0.05, 0.6, size=extra)
            for k in range(extra):
                results.append({"image_id": image["id"], "category_id": int(cats[k]),
                                "bbox": [float(xs[k]), float(ys[k]), float(ws[k]), float(hs[k])],
                                "score": float(scores[k])})
    return results


def generated_here(annotation_file):
    """True when `annotation_file` is one this module wrote (its info.description says so)."""
    from .errors import FsafReproError
    from .jsonio import load_json
    try:
        data = load_json(annotation_file, DataError, "annotation file")
    except FsafReproError:
        return False  # not readable as JSON, so not a file this module wrote; its verb's own read names the fault
    info = data.get("info") if isinstance(data, dict) else None
    return isinstance(info, dict) and info.get("description") == GENERATED_DESCRIPTION
