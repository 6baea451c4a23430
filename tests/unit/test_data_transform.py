"""The recipe's transform (section 4.2, Fsaf_preprocess.py) against a direct computation of its formula."""
import math

import cv2
import numpy as np
import pytest

from fsaf_repro.data import (boxes_to_original, letterbox_to_canvas, letterbox_to_canvas_uint8,
                             normalisation_lut, scaled_size)
from fsaf_repro.errors import DataError
from fsaf_repro.spec import input_constants

CONST = input_constants()
H, W = CONST["height"], CONST["width"]

# (width, height): landscape, portrait, tiny (upscaled), very wide, very tall, exactly the canvas,
# larger than the canvas, odd sizes
SIZES = [(640, 480), (480, 640), (24, 18), (1500, 120), (120, 900), (1216, 800), (2000, 1500),
         (333, 517), (1, 1)]


def _image(width, height, seed):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(height, width, 3)).astype(np.uint8)


def direct_formula(bgr, height, width):
    """The recipe's preprocessing written out step by step, with no shared code."""
    h, w = bgr.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = int(math.floor(w * scale)), int(math.floor(h * scale))
    resized = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB).astype(np.float32)
    mean = np.array(CONST["mean_rgb"], dtype=np.float32)
    std = np.array(CONST["std_rgb"], dtype=np.float32)
    normalised = (rgb - mean) / std
    canvas = np.zeros((height, width, 3), dtype=np.float32)
    canvas[:new_h, :new_w] = normalised
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)), scale, new_h, new_w


@pytest.mark.parametrize("size", SIZES, ids=["{}x{}".format(*s) for s in SIZES])
def test_transform_equals_direct_formula_bit_for_bit(size):
    bgr = _image(size[0], size[1], seed=size[0] * 7 + size[1])
    chw, scale, new_h, new_w = letterbox_to_canvas(bgr, H, W)
    want, want_scale, want_h, want_w = direct_formula(bgr, H, W)
    assert chw.dtype == np.float32 and chw.shape == (3, H, W)
    assert (scale, new_h, new_w) == (want_scale, want_h, want_w)
    assert float(np.max(np.abs(chw - want))) == 0.0
    assert np.array_equal(chw, want)


def test_known_scales_and_sizes():
    # 640x480: min(1216/640, 800/480) = 5/3 -> 1066x800; 1500x120: 1216/1500 -> 1216x97
    assert scaled_size(640, 480, H, W)[1:] == (1066, 800)
    assert scaled_size(1500, 120, H, W)[1:] == (1216, 97)
    assert scaled_size(24, 18, H, W)[1:] == (1066, 800)
    scale, new_w, new_h = scaled_size(1216, 800, H, W)
    assert (scale, new_w, new_h) == (1.0, 1216, 800)


def test_padding_is_zero_and_image_is_top_left():
    bgr = np.full((480, 640, 3), 255, dtype=np.uint8)
    chw, _, new_h, new_w = letterbox_to_canvas(bgr, H, W)
    assert (new_h, new_w) == (800, 1066)
    assert not chw[:, :, new_w:].any()
    lut = normalisation_lut()
    assert np.array_equal(chw[:, :new_h, :new_w], np.broadcast_to(lut[:, 255][:, None, None], (3, new_h, new_w)))


def test_channel_order_is_rgb():
    bgr = np.zeros((8, 8, 3), dtype=np.uint8)
    bgr[..., 0] = 10   # blue
    bgr[..., 2] = 200  # red
    chw, _, _, _ = letterbox_to_canvas(bgr, H, W)
    mean, std = CONST["mean_rgb"], CONST["std_rgb"]
    assert chw[0, 0, 0] == np.float32((np.float32(200) - np.float32(mean[0])) / np.float32(std[0]))
    assert chw[2, 0, 0] == np.float32((np.float32(10) - np.float32(mean[2])) / np.float32(std[2]))


def test_lut_matches_formula_for_every_value():
    values = np.arange(256, dtype=np.float32)
    mean = np.array(CONST["mean_rgb"], dtype=np.float32)
    std = np.array(CONST["std_rgb"], dtype=np.float32)
    want = ((values[:, None] - mean) / std).T
    assert np.array_equal(normalisation_lut(), want)


def test_reused_buffer_gets_fresh_zero_padding():
    dirty = np.full((3, H, W), 7.0, dtype=np.float32)
    bgr = _image(300, 500, seed=3)
    got, _, _, _ = letterbox_to_canvas(bgr, H, W, out=dirty)
    assert got is dirty
    assert np.array_equal(got, direct_formula(bgr, H, W)[0])


def test_uint8_variant_is_resize_and_zero_pad_only():
    bgr = _image(640, 427, seed=5)
    chw, scale, new_h, new_w = letterbox_to_canvas_uint8(bgr, H, W)
    resized = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    assert chw.dtype == np.uint8 and chw.shape == (3, H, W)
    assert np.array_equal(chw[:, :new_h, :new_w], resized[:, :, ::-1].transpose(2, 0, 1))
    assert not chw[:, new_h:, :].any() and not chw[:, :, new_w:].any()
    # the float path is the same resize followed by the table look-up
    flt, _, _, _ = letterbox_to_canvas(bgr, H, W)
    lut = normalisation_lut()
    assert np.array_equal(flt[:, :new_h, :new_w],
                          np.stack([lut[c][chw[c, :new_h, :new_w]] for c in range(3)]))


def test_boxes_to_original_inverts_the_scale():
    scale = scaled_size(640, 480, H, W)[0]
    original = np.array([[10.0, 20.0, 300.0, 400.0], [0.0, 0.0, 640.0, 480.0]], dtype=np.float32)
    on_canvas = original * np.float32(scale)
    back = boxes_to_original(on_canvas, scale)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, original, rtol=0, atol=1e-4)
    # a score column rides along untouched
    with_score = np.concatenate([on_canvas, np.array([[0.9], [0.5]], np.float32)], axis=1)
    out = boxes_to_original(with_score, scale)
    assert np.array_equal(out[:, 4], with_score[:, 4])
    assert np.array_equal(out[:, :4], back)


def test_transform_refuses_non_uint8_or_wrong_channels():
    with pytest.raises(DataError):
        letterbox_to_canvas(np.zeros((10, 10, 3), dtype=np.float32), H, W)
    with pytest.raises(DataError):
        letterbox_to_canvas(np.zeros((10, 10), dtype=np.uint8), H, W)
    with pytest.raises(DataError):
        boxes_to_original(np.zeros((2, 3)), 1.0)


def test_normalisation_table_follows_the_spec_in_effect():
    import copy

    from fsaf_repro.data import normalisation_lut
    from fsaf_repro.spec import load_recipe_spec, spec_override
    packaged = normalisation_lut().copy()
    recipe = copy.deepcopy(dict(load_recipe_spec()))
    recipe["input"]["mean_rgb"] = [0.0, 0.0, 0.0]
    recipe["input"]["std_rgb"] = [1.0, 1.0, 1.0]
    with spec_override(recipe):
        assert normalisation_lut()[0, 255] == 255.0  # identity under the override, not the cached table
    assert np.array_equal(normalisation_lut(), packaged)
