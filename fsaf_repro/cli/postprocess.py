"""The `postprocess` verb (recipe step 6): network outputs -> COCO results json, optionally scored."""

from ..data import CocoImageSet, read_manifest
from ..evaluate import DEFAULT_SCORER, SCORERS, evaluate_results, format_per_class_table, format_recipe_table
from ..postprocess import detections_to_coco, metas_from_manifest, read_outputs
from ..results_json import write_results_json
from ..errors import OptionError
from ..options import BATCH_SIZE, COUNT, IMAGE_SIDE, PROBABILITY
from ..spec import model_constants
from .args import input_dir, input_file, input_path, output_file, typed
from .preprocess import FOLDER_HELP


def _cli_postprocess(args):
    if args.annotations is None and args.images is None:
        raise OptionError("postprocess needs --annotations (the COCO set the inputs came from) or --images (the "
                          "image folder preprocess read without annotations)")
    if args.annotations is None and args.evaluate:
        raise OptionError("--evaluate needs --annotations: an image folder alone has no ground truth to score")
    record = read_manifest(args.manifest) if args.manifest else None
    height, width = args.height, args.width
    if isinstance(record, dict):
        # the canvas the .bin files were written at, unless given (a contradiction is then an error)
        height = height if height is not None else record.get("height")
        width = width if width is not None else record.get("width")
    image_set = CocoImageSet(args.annotations, args.images or "", limit=args.limit, height=height, width=width)
    # the scales outputs are undone with: manifest, else image headers, else annotation sizes
    if record is not None:
        metas = metas_from_manifest(args.manifest, image_set, record)
    else:
        metas = image_set.decoded_metas() if args.images else list(image_set.metas)
    dets, labels = read_outputs(args.format, args.outputs, metas, image_set.output_stems, batch_size=args.batch_size,
                                labels_path=args.labels_npy, outfmt=args.outfmt)
    results = detections_to_coco(dets, labels, metas, image_set.category_ids,
                                 score_threshold=args.score_threshold, clip=args.clip)
    write_results_json(args.results, results)
    print(f"postprocess: {len(results)} detections for {len(metas)} images -> {args.results}")
    if args.evaluate:
        # the file just written, so that an error names it and its row
        metrics = evaluate_results(args.annotations, args.results, scorer=args.scorer,
                                   image_ids=[m.image_id for m in metas], drop_degenerate=args.drop_degenerate)
        if metrics["degenerate_dropped"]:
            print(f"dropped {metrics['degenerate_dropped']} detection(s) with a box of width or height <= 0 "
                  "(--drop-degenerate)")
        print(format_recipe_table(metrics["stats"]))
        print(format_per_class_table(metrics["per_class"]))
    return 0


def register(subparsers):
    parser = subparsers.add_parser(
        "postprocess", help="recipe step 6: network outputs -> COCO results json (optionally scored)")
    parser.add_argument("--annotations", default=None, type=input_file("annotation file"),
                        help="COCO instances json the inputs came from; " + FOLDER_HELP + " (give --images)")
    parser.add_argument("--images", default=None, type=input_dir("image folder"),
                        help="image directory: its headers give each image's decoded size (EXIF rotation); "
                             "not needed with --manifest and --annotations")
    parser.add_argument("--manifest", default=None, type=input_file("preprocess manifest"),
                        help="preprocess_manifest.json of the preprocessing run: the images and scales used")
    parser.add_argument("--height", type=typed(IMAGE_SIDE), default=None,
                        help="model input height (default: the manifest's, else the recipe's)")
    parser.add_argument("--width", type=typed(IMAGE_SIDE), default=None,
                        help="model input width (default: the manifest's, else the recipe's)")
    parser.add_argument("--limit", type=typed(COUNT), default=None,
                        help="first N images by id, as in preprocess (default: all)")
    parser.add_argument("--format", choices=("benchmark", "ais_bench", "npy"), default="benchmark",
                        help="which tool wrote --outputs: the benchmark tool's dumpOutput, ais_bench, or .npy files")
    parser.add_argument("--outputs", required=True, type=input_path("network outputs"),
                        help="benchmark dumpOutput dir, ais_bench output dir, or the dets .npy")
    parser.add_argument("--labels-npy", default=None, type=input_file("labels .npy"), help="labels .npy (format npy)")
    parser.add_argument("--batch-size", type=typed(BATCH_SIZE), default=1, help="ais_bench batch size")
    parser.add_argument("--outfmt", default="BIN", choices=("BIN", "NPY"), help="ais_bench --outfmt")
    parser.add_argument("--results", required=True, type=output_file("results file"), help="COCO results json to write")
    parser.add_argument("--score-threshold", type=typed(PROBABILITY), default=model_constants()["score_threshold"],
                        help="drop detections scoring below this, in [0, 1]")
    parser.add_argument("--clip", action="store_true",
                        help="clip boxes to the original image (the recipe does not)")
    parser.add_argument("--evaluate", action="store_true", help="score the results right away")
    parser.add_argument("--scorer", default=DEFAULT_SCORER, choices=SCORERS, help="with --evaluate: the COCO scorer")
    parser.add_argument("--drop-degenerate", action="store_true",
                        help="with --evaluate: leave out detections whose box has width or height <= 0 and "
                             "count them (default: such a detection is an error)")
    parser.set_defaults(func=_cli_postprocess)
