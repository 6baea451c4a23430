"""The recipe's data path (step 4): COCO images -> network inputs."""
from .bins import (  # noqa: F401  (the package's public names)
    BIN_MISSING, BIN_RECORD_NAME, AnnotationImage, Annotations, BatchStream, CocoImageSet, ImageMeta,
    PreprocessReport, SkippedImage, bin_bytes, bin_file_problem, bin_transform_key, boxes_to_original,
    category_ids_from_categories, decode_bgr, file_name_problem, file_sha256, iter_batches, letterbox_to_canvas,
    letterbox_to_canvas_uint8, load_annotation_json, normalisation_lut, output_stems, probe_decoded_size,
    read_annotation_file, read_bgr, read_bin_record, read_image_bytes, read_info_file, register_cli, scaled_size,
    validate_annotations, write_bins, write_info_files, write_manifest)
