"""The recipe's transform, the one every consumer of images uses (section 4.2 and Fsaf_preprocess.py
of the public recipe: Ascend ModelZoo-PyTorch, ACL_PyTorch/contrib/cv/detection/Fsaf):

    OpenCV colour read (BGR uint8) -> scale = min(W / w, H / h) -> floor-sized cv2.resize INTER_LINEAR
    -> BGR->RGB -> (x - mean) / std in float32 -> zero pad right/bottom to H x W -> CHW float32

with its inverse for boxes (`boxes_to_original`). A bad image is an ImageReadError naming the file,
never a silently wrong array.
"""
import math
import os
from typing import Any, Optional, Tuple

import cv2
import numpy as np

from ..errors import DataError, ImageReadError
from ..spec import input_constants

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_SOS = b"\xff\xda"
_JPEG_EOI = b"\xff\xd9"


# EXIF orientation values 5-8 turn the stored picture by 90 degrees (transpose, rotate 90 CW,
# transverse, rotate 90 CCW): the decoded image has width and height swapped.
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def probe_decoded_size(path: str) -> Tuple[int, int]:
    """(width, height) of the image `read_bgr(path)` returns, without decoding a JPEG's pixels.

    For a JPEG (all of val2017) the header gives the stored size and its EXIF APP1 segment the
    orientation, read as raw EXIF only: newer Pillow also takes an orientation from XMP, which
    OpenCV ignores. Any other format is decoded with `read_bgr`, since which of them OpenCV
    rotates by an EXIF tag depends on its version.
    """
    from PIL import Image
    path = os.fspath(path)
    try:
        with Image.open(path) as image:
            (width, height), image_format, raw_exif = image.size, image.format, image.info.get("exif")
        orientation = None
        if image_format == "JPEG" and raw_exif:
            exif = Image.Exif()
            exif.load(raw_exif)
            orientation = exif.get(_EXIF_ORIENTATION_TAG)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise ImageReadError(f"{path}: cannot read the image header ({exc})")
    if image_format != "JPEG":
        decoded = read_bgr(path)
        return decoded.shape[1], decoded.shape[0]
    if orientation in _TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def read_bgr(path: str) -> np.ndarray:
    """Decode `path` as `cv2.imread(path, cv2.IMREAD_COLOR)` does: uint8 HxWx3 BGR.

    That read turns grayscale into three equal channels, drops an alpha channel, scales 16-bit
    samples to 8 bits (value >> 8), converts CMYK JPEGs to BGR and applies the EXIF orientation tag
    (so a JPEG tagged "rotate 90" comes back with width and height swapped). The bytes are decoded
    with `cv2.imdecode`, which applies the same rules; tests compare it with `cv2.imread`.

    Where `cv2.imread` would hand back something wrong or nothing, this raises ImageReadError naming
    the file: missing or unreadable file, zero bytes, undecodable content (text, corrupt header) and
    a JPEG cut short (libjpeg would fill the missing part with grey and only print a warning).
    """
    path = os.fspath(path)
    return decode_bgr(read_image_bytes(path), path)


def read_image_bytes(path: str) -> bytes:
    """The bytes of an image file; ImageReadError naming it when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}")
    except OSError as exc:
        raise ImageReadError(f"cannot read image file {path}: {exc}")


def decode_bgr(data: bytes, path: str) -> np.ndarray:
    """`read_bgr` on bytes already read from `path` (named in errors); see `read_bgr`."""
    if not data:
        raise ImageReadError(f"image file is empty (0 bytes): {path}")
    if data.startswith(_JPEG_SOI):
        # Entropy-coded data stuffs 0xFF bytes, so after the last start-of-scan marker the only
        # FFD9 is the end-of-image marker: its absence means the file was cut short.
        if data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS):
            raise ImageReadError(
                f"JPEG file is truncated (no end-of-image marker after its last scan, {len(data)} bytes): {path}")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageReadError(f"OpenCV failed to decode {path}: {exc}")
    if image is None:
        raise ImageReadError(
            f"OpenCV could not decode {path} ({len(data)} bytes): not an image or a corrupt one")
    return image


def canvas_size(height: Optional[int], width: Optional[int]) -> Tuple[int, int]:
    """(height, width) of the network input: the given values, the spec's where None."""
    const = input_constants()
    return (const["height"] if height is None else int(height),
            const["width"] if width is None else int(width))


def scaled_size(orig_w: int, orig_h: int, height: Optional[int] = None,
                width: Optional[int] = None) -> Tuple[float, int, int]:
    """The recipe's keep-ratio scale: (scale, new_w, new_h) with floor-rounded new size.

    `scale = min(width / orig_w, height / orig_h)` (it may upscale). The floor can only reach 0 for
    images more than ~1000 times wider than tall; those are kept at 1 pixel instead of crashing.
    """
    if orig_w <= 0 or orig_h <= 0:
        raise DataError(f"image size must be positive, got {orig_w}x{orig_h}")
    height, width = canvas_size(height, width)
    scale = min(float(width) / orig_w, float(height) / orig_h)
    new_w = min(width, max(1, int(math.floor(orig_w * scale))))
    new_h = min(height, max(1, int(math.floor(orig_h * scale))))
    return scale, new_w, new_h


_LUT_CACHE = {}


def normalisation_lut() -> np.ndarray:
    """float32 [3, 256]: row c holds (v - mean[c]) / std[c] for v = 0..255, RGB channel order.

    Computed with the very float32 operations of the formula, so a table look-up gives bit-identical
    values to normalising the image array, in a fraction of the time.
    """
    # keyed by the values, not computed once: a spec override (tests, reproduce) must take effect,
    # and reading the spec each call lets a stage's read recorder see the input section
    const = input_constants()
    key = (tuple(const["mean_rgb"]), tuple(const["std_rgb"]))
    if key not in _LUT_CACHE:
        mean = np.asarray(key[0], dtype=np.float32)
        std = np.asarray(key[1], dtype=np.float32)
        values = np.arange(256, dtype=np.float32)
        _LUT_CACHE[key] = np.stack([(values - mean[c]) / std[c] for c in range(3)]).astype(np.float32)
    return _LUT_CACHE[key]


def _check_bgr(bgr):
    if not isinstance(bgr, np.ndarray) or bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        found = (f"{bgr.dtype} {bgr.shape}" if isinstance(bgr, np.ndarray)
                 else getattr(bgr, "dtype", type(bgr).__name__))
        raise DataError(f"expected a uint8 HxWx3 BGR image, got {found}")


def _resize(bgr, height, width):
    orig_h, orig_w = bgr.shape[:2]
    scale, new_w, new_h = scaled_size(orig_w, orig_h, height, width)
    resized = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return resized, scale, new_h, new_w


def _zero_padding(out, new_h, new_w):
    out[:, new_h:, :] = 0
    out[:, :new_h, new_w:] = 0


def letterbox_to_canvas(bgr: np.ndarray, height: Optional[int] = None, width: Optional[int] = None,
                        out: Optional[np.ndarray] = None) -> Tuple[np.ndarray, float, int, int]:
    """The recipe's transform: BGR uint8 HWC -> (float32 [3, height, width], scale, new_h, new_w).

    `out`, when given, is a float32 [3, height, width] array filled in place (a batch slot).
    """
    _check_bgr(bgr)
    height, width = canvas_size(height, width)
    resized, scale, new_h, new_w = _resize(bgr, height, width)
    if out is None:
        out = np.empty((3, height, width), dtype=np.float32)
    _zero_padding(out, new_h, new_w)
    lut = normalisation_lut()
    planes = cv2.split(resized)
    for c in range(3):  # output channel c (RGB) reads BGR channel 2 - c
        target = out[c, :new_h, :new_w]
        # cv2.LUT copies table entries (no arithmetic), straight into the canvas plane
        result = cv2.LUT(planes[2 - c], lut[c].reshape(1, 256), dst=target)
        if result.__array_interface__["data"][0] != target.__array_interface__["data"][0]:
            target[...] = result
    return out, scale, new_h, new_w


def letterbox_to_canvas_uint8(bgr: np.ndarray, height: Optional[int] = None, width: Optional[int] = None,
                              out: Optional[np.ndarray] = None) -> Tuple[np.ndarray, float, int, int]:
    """The recipe's resize and padding without normalisation: uint8 [3, height, width] RGB, zero padded.

    For models that normalise inside the graph; padding is 0 in raw pixel values here (the float
    path pads with 0 after normalising), so such a model must re-zero the padding itself.
    """
    _check_bgr(bgr)
    height, width = canvas_size(height, width)
    resized, scale, new_h, new_w = _resize(bgr, height, width)
    if out is None:
        out = np.empty((3, height, width), dtype=np.uint8)
    _zero_padding(out, new_h, new_w)
    for c in range(3):
        out[c, :new_h, :new_w] = resized[:, :, 2 - c]
    return out, scale, new_h, new_w


def boxes_to_original(boxes: Any, scale: float) -> np.ndarray:
    """Undo the transform for boxes: network-input pixels -> original-image pixels.

    The image sits at the top-left of the canvas, so there is no offset: only the first four columns
    (x1, y1, x2, y2) are divided by `scale`; further columns (a score) are copied. No clipping.
    """
    boxes = np.asarray(boxes)
    if boxes.ndim < 1 or boxes.shape[-1] < 4:
        raise DataError(f"boxes must have at least 4 columns (x1, y1, x2, y2), got shape {boxes.shape}")
    if not scale > 0:
        raise DataError(f"scale must be positive, got {scale!r}")
    out = np.array(boxes, dtype=np.float32, copy=True)
    # a Python float keeps float32 arithmetic under both numpy 1.21 and numpy 2 casting rules
    out[..., :4] = out[..., :4] / float(scale)
    return out


INPUT_DTYPES = ("float32", "uint8")


def input_array_dtype(input_dtype: str) -> type:
    """The numpy dtype of network inputs named `input_dtype`: float32 (normalised) or uint8 (raw RGB)."""
    if input_dtype not in INPUT_DTYPES:
        raise DataError(f"input_dtype must be 'float32' or 'uint8', got {input_dtype!r}")
    return np.float32 if input_dtype == "float32" else np.uint8
