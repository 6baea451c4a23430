"""The `preprocess` and `info` verbs: images -> .bin files, info files and a manifest."""
import os
import sys

from ..data import FOLDER_IMAGE_SUFFIXES, CocoImageSet, write_bins, write_info_files, write_manifest
from ..locking import run_lock
from ..options import COUNT, IMAGE_SIDE, THREADS
from ..spec import input_constants
from .args import input_dir, input_file, output_dir, output_file, typed


# How a set is taken without an annotation file, said once for every verb that takes one (help).
FOLDER_HELP = ("without it, the image folder alone, as the recipe's step 4.2 takes it: its image files ({}) "
               "in file-name order (code points, as `LC_ALL=C ls`), ids 1, 2, ... in that order").format(
                   " ".join(FOLDER_IMAGE_SUFFIXES))


def add_image_set_arguments(parser, canvas=True):
    """--annotations, --images, --limit (and with `canvas`, --height and --width): the image set of
    preprocess, info and infer (whose canvas options are the model's: fsaf_repro.cli.model_input)."""
    recipe = input_constants()
    parser.add_argument("--annotations", default=None, type=input_file("annotation file"),
                        help="COCO instances json (instances_val2017.json): its images in image-id order; "
                             + FOLDER_HELP)
    parser.add_argument("--images", required=True, type=input_dir("image folder"),
                        help="image folder (val2017)")
    parser.add_argument("--limit", type=typed(COUNT), default=None,
                        help="only the first N images by image id (default: all)")
    if canvas:
        for side in ("height", "width"):
            parser.add_argument("--" + side, type=typed(IMAGE_SIDE), default=None,
                                help=f"network input {side} (default: the recipe's {recipe[side]})")


def _cmd_preprocess(args):
    # one writer per .bin folder: a second run on it refuses at once (fsaf_repro.locking)
    with run_lock(args.out, "preprocess"):
        return _preprocess_locked(args)


def _preprocess_locked(args):
    image_set = CocoImageSet(args.annotations, args.images, limit=args.limit, height=args.height,
                             width=args.width)
    report = write_bins(image_set, args.out, workers=args.workers, skip_bad=args.skip_bad,
                        progress=not args.no_progress, verify=args.verify)
    bad_ids = [s.image_id for s in report.skipped]
    write_info_files(image_set, bin_dir=args.out, bin_info=args.bin_info, jpg_info=args.jpg_info,
                     exclude_ids=bad_ids, report=report)
    manifest = os.path.join(args.out, "preprocess_manifest.json")
    write_manifest(manifest, image_set, report)
    print(f"preprocess: {len(report.bin_paths)} .bin files in {args.out} ({report.written} written, "
          f"{report.reused} already complete); info files {args.bin_info} and {args.jpg_info}; manifest {manifest}")
    listed = {os.path.basename(p) for p in report.bin_paths}
    foreign = sorted(n for n in os.listdir(args.out) if n.lower().endswith(".bin") and n not in listed)
    if foreign:
        sys.stderr.write(f"preprocess: warning: {args.out} holds {len(foreign)} .bin file(s) not in this selection "
                         f"(first: {', '.join(foreign[:3])}); the info file lists only the selection, but ais_bench "
                         f"--input {args.out} would read them all\n")
    if report.skipped:
        sys.stderr.write(f"preprocess: skipped {len(report.skipped)} bad image(s):\n")
        for item in report.skipped:
            sys.stderr.write(f"  {item.path} (image id {item.image_id}): {item.reason}\n")
    return 0


def _cmd_info(args):
    image_set = CocoImageSet(args.annotations, args.images, limit=args.limit, height=args.height,
                             width=args.width)
    # the jpg info gives decoded sizes, as the recipe's cv2.imread: read from the image headers
    metas = image_set.decoded_metas() if args.jpg_info else None
    written = write_info_files(image_set, bin_dir=args.bin_dir, bin_info=args.bin_info if args.bin_dir else None,
                               jpg_info=args.jpg_info, metas=metas)
    files = " and ".join(p for p in (args.bin_info if "bin" in written else None, args.jpg_info) if p)
    print(f"info: {len(image_set)} lines in {files}")
    return 0


def register(subparsers):
    pre = subparsers.add_parser(
        "preprocess", help="recipe step 4: images -> <stem>.bin (float32 CHW) + info files")
    add_image_set_arguments(pre)
    pre.add_argument("--out", required=True, type=output_dir(".bin folder"),
                     help="directory for the .bin files (val2017_bin)")
    pre.add_argument("--bin-info", default="fsaf.info", type=output_file("bin info file"),
                     help="bin info file for the benchmark tool")
    pre.add_argument("--jpg-info", default="fsaf_jpeg.info", type=output_file("jpg info file"),
                     help="jpg info file (each image's decoded size, as the recipe's cv2.imread gives it)")
    pre.add_argument("--workers", type=typed(THREADS), default=None, help="processes (default: all cores)")
    pre.add_argument("--skip-bad", action="store_true",
                     help="continue past unreadable images and list them (default: stop at the first)")
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")
    pre.add_argument("--verify", action="store_true",
                     help="reuse a .bin only if its content's sha256 is the one recorded when it was written (default: "
                          "size and mtime; see docs/preprocess-reuse.md)")
    pre.set_defaults(func=_cmd_preprocess)

    info = subparsers.add_parser(
        "info", help="write the tools' info files (get_info.py) in image-id order")
    add_image_set_arguments(info)
    info.add_argument("--bin-dir", default=None, type=input_dir(".bin folder"),
                      help="directory holding the .bin files (for --bin-info)")
    info.add_argument("--bin-info", default="fsaf.info", type=output_file("bin info file"),
                      help="bin info file for the benchmark tool (written with --bin-dir)")
    info.add_argument("--jpg-info", default="fsaf_jpeg.info", type=output_file("jpg info file"),
                      help="jpg info file (each image's decoded size, as the recipe's cv2.imread gives it)")
    info.set_defaults(func=_cmd_info)
