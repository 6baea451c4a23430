"""The recipe's data path (step 4): COCO images -> network inputs, in four parts used separately.

- `transform`: reading an image as the recipe's cv2.imread does, and the recipe's letterbox and
  normalisation (recipe section 4.2, its Fsaf_preprocess.py), with its inverse for boxes.
- `coco`: the annotation file's one check, the images of a COCO set (`CocoImageSet`) and the names
  of the files made for each image.
- `bins`: the `.bin` files and info files for the benchmark tool and ais_bench, with the record
  that decides when a `.bin` is reused, and the preprocess manifest.
- `stream`: batches straight from the images to a backend, with no file on disk.

Imports flow one way: transform <- coco <- bins, stream. The `preprocess` and `info` verbs are in
`fsaf_repro.cli.preprocess`. Every public name is importable from `fsaf_repro.data`.
"""
from ..fileio import file_sha256
from .bins import (BIN_MISSING, BIN_RECORD_NAME, PreprocessReport, bin_bytes, bin_file_problem, bin_transform_key,
                   read_bin_record, read_info_file, read_manifest, write_bins, write_info_files, write_manifest)
from .coco import (ANNOTATION_DIR, ANNOTATION_FILE_NAME, ANNOTATION_RELPATH, FOLDER_IMAGE_SUFFIXES, IMAGE_DIR_NAME,
                   AnnotationImage, Annotations, CocoImageSet, ImageMeta, SkippedImage, category_ids_from_categories,
                   coco_annotation_path, coco_image_dir, file_name_problem, folder_images, load_annotation_json,
                   output_stems,
                   read_annotation_file, validate_annotations)
from .stream import BatchStream, iter_batches
from .transform import (boxes_to_original, decode_bgr, letterbox_to_canvas, letterbox_to_canvas_uint8,
                        normalisation_lut, probe_decoded_size, read_bgr, read_image_bytes, scaled_size)

__all__ = [
    "ANNOTATION_DIR", "ANNOTATION_FILE_NAME", "ANNOTATION_RELPATH", "FOLDER_IMAGE_SUFFIXES", "IMAGE_DIR_NAME",
    "coco_annotation_path", "coco_image_dir", "AnnotationImage", "Annotations", "BIN_MISSING", "BIN_RECORD_NAME",
    "BatchStream",
    "CocoImageSet", "ImageMeta",
    "PreprocessReport", "SkippedImage", "bin_bytes", "bin_file_problem", "bin_transform_key", "boxes_to_original",
    "category_ids_from_categories", "decode_bgr", "file_name_problem", "file_sha256", "folder_images", "iter_batches",
    "letterbox_to_canvas", "letterbox_to_canvas_uint8", "load_annotation_json", "normalisation_lut", "output_stems",
    "probe_decoded_size", "read_annotation_file", "read_bgr", "read_bin_record", "read_image_bytes", "read_info_file",
    "read_manifest",
    "scaled_size", "validate_annotations", "write_bins", "write_info_files", "write_manifest",
]
