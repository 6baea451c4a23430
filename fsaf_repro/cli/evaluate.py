"""The `evaluate` verb: score a COCO results json (the recipe's 12-line table and per-class AP)."""

from ..data import read_annotation_file
from ..errors import OptionError
from ..evaluate import (DEFAULT_SCORER, SCORERS, accuracy_gate, evaluate_results, format_per_class_table,
                        format_recipe_table,
                        metrics_record)
from ..results_json import write_results_json
from ..options import COUNT
from .args import input_file, output_file, typed


def _cli_evaluate(args):
    if args.gate and args.limit is not None:
        raise OptionError("--gate judges a full val2017 score (the recipe's claim); leave out --limit")
    image_ids = None
    if args.limit is not None:
        images = read_annotation_file(args.annotations).images  # in id order
        image_ids = [image.image_id for image in images][:args.limit]
    metrics = evaluate_results(args.annotations, args.results, scorer=args.scorer, image_ids=image_ids,
                               drop_degenerate=args.drop_degenerate)
    print(f"Evaluate annotation type *bbox* ({metrics['scorer']}; {metrics['num_images']} images, "
          f"{metrics['num_detections']} detections; annotations sha256 {metrics['annotation_sha256']})")
    if metrics["degenerate_dropped"]:
        print(f"dropped {metrics['degenerate_dropped']} detection(s) with a box of width or height <= 0 "
              "(--drop-degenerate)")
    print(format_recipe_table(metrics["stats"]))
    if not args.no_per_class:
        print(format_per_class_table(metrics["per_class"]))
    if args.metrics_out:
        write_results_json(args.metrics_out, metrics_record(metrics))
        print(f"metrics written to {args.metrics_out}")
    if args.gate:
        passed, line = accuracy_gate(metrics["stats"][0])
        print(line)
        return 0 if passed else 1
    return 0


def register(subparsers):
    parser = subparsers.add_parser(
        "evaluate", help="score a COCO results json: the recipe's 12-line table and per-class AP")
    parser.add_argument("--annotations", required=True, type=input_file("annotation file"),
                        help="COCO instances json (ground truth)")
    parser.add_argument("--results", required=True, type=input_file("results file"), help="COCO results json to score")
    parser.add_argument("--scorer", default=DEFAULT_SCORER, choices=SCORERS, help="the COCO scorer")
    parser.add_argument("--limit", type=typed(COUNT), default=None,
                        help="score only the first N images by id (a partial run; default: all)")
    parser.add_argument("--metrics-out", default=None, type=output_file("metrics file"),
                        help="write the metrics record (json) here")
    parser.add_argument("--no-per-class", action="store_true", help="skip the per-class AP table")
    parser.add_argument("--drop-degenerate", action="store_true",
                        help="leave out detections whose box has width or height <= 0 and count them in the "
                             "metrics record (default: such a detection is an error)")
    parser.add_argument("--gate", action="store_true",
                        help="exit 1 unless AP@[.5:.95] meets the recipe's accuracy claim (spec accuracy: the "
                             "design card's minimum, within 1 point of PyTorch); for a full val2017 score")
    parser.set_defaults(func=_cli_evaluate)
