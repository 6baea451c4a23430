"""An EXIF-rotated image on the .bin path: preprocess (in worker processes, and on a rerun that keeps
the .bin files) records the decoded size it used, and postprocess undoes that image's own scale.

OpenCV's colour read, the recipe's, rotates a JPEG by its EXIF orientation tag, while the COCO
annotation gives the stored size; the transform follows the decoded image (see CocoImageSet.read).
"""
import json
import os
import struct
import warnings

import cv2
import numpy as np
import pytest

from fsaf_repro import cli
from fsaf_repro.data import CocoImageSet, probe_decoded_size, read_bgr, read_info_file
from fsaf_repro.errors import DataError, ImageReadError
from fsaf_repro.postprocess import DETS_COLUMNS, _max_dets, read_results_json
from fsaf_repro.synthetic import make_synthetic_coco

H, W = 96, 128  # a reduced canvas: the transform's arithmetic is the same at 800x1216
ROTATED = 1  # index of the image given an EXIF "rotate 90" tag


def _photo(height, width, seed=0):
    rng = np.random.RandomState(seed)
    return cv2.GaussianBlur(rng.randint(0, 256, (height, width, 3)).astype(np.uint8), (5, 5), 0)


def _save_with_orientation(path, bgr, orientation):
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(bgr[..., ::-1]).save(path, exif=exif.tobytes(), quality=95)


@pytest.fixture
def rotated_set(tmp_path):
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path / "coco"), num_images=3, seed=5,
                                                     layouts=[(64, 40, "jpg")] * 3)
    meta = CocoImageSet(annotation_file, image_dir).metas[ROTATED]
    # stored as the annotation says (64x40), shown rotated: decoded 40x64
    _save_with_orientation(meta.path, _photo(meta.orig_h, meta.orig_w), 6)
    return annotation_file, image_dir


def _preprocess(annotation_file, image_dir, tmp_path, workers):
    out = str(tmp_path / "bins")
    argv = ["preprocess", "--annotations", annotation_file, "--images", image_dir, "--out", out,
            "--bin-info", str(tmp_path / "fsaf.info"), "--jpg-info", str(tmp_path / "fsaf_jpeg.info"),
            "--height", str(H), "--width", str(W), "--workers", str(workers), "--no-progress"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the rotation warning (tested in test_data_coco)
        assert cli.main(argv) == 0
    with open(os.path.join(out, "preprocess_manifest.json")) as handle:
        return out, json.load(handle)


@pytest.mark.parametrize("orientation, transposed", [(1, False), (3, False), (5, True), (6, True), (8, True)])
def test_header_probe_gives_the_decoded_size(tmp_path, orientation, transposed):
    path = str(tmp_path / "x.jpg")
    _save_with_orientation(path, _photo(30, 50), orientation)
    assert read_bgr(path).shape[:2] == ((50, 30) if transposed else (30, 50))
    assert probe_decoded_size(path) == ((30, 50) if transposed else (50, 30))


@pytest.mark.parametrize("orientation", [1, 6])
def test_header_probe_of_a_png_agrees_with_opencv(tmp_path, orientation):
    # OpenCV rotates some non-JPEG formats by their EXIF tag too (version dependent): they are decoded
    path = str(tmp_path / "x.png")
    _save_with_orientation(path, _photo(20, 36), orientation)
    decoded = read_bgr(path)
    assert probe_decoded_size(path) == (decoded.shape[1], decoded.shape[0])


def _with_xmp_orientation(jpeg_bytes, orientation):
    """The JPEG with an XMP APP1 segment (tiff:Orientation) right after SOI, and no EXIF."""
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           f'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="{orientation}"/>'
           '</rdf:RDF></x:xmpmeta>').encode("ascii")
    payload = b"http://ns.adobe.com/xap/1.0/\x00" + xmp
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg_bytes[:2] + segment + jpeg_bytes[2:]


def test_header_probe_ignores_an_xmp_orientation_as_opencv_does(tmp_path):
    ok, encoded = cv2.imencode(".jpg", _photo(20, 36))
    path = tmp_path / "xmp.jpg"
    path.write_bytes(_with_xmp_orientation(encoded.tobytes(), 6))
    decoded = read_bgr(str(path))
    assert ok and decoded.shape[:2] == (20, 36)  # OpenCV reads EXIF only
    assert probe_decoded_size(str(path)) == (36, 20)


def test_header_probe_of_a_broken_file_names_it(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="broken.jpg: cannot read the image header"):
        probe_decoded_size(str(broken))


def test_worker_processes_report_the_rotation_to_manifest_and_info_files(rotated_set, tmp_path):
    annotation_file, image_dir = rotated_set
    out, manifest = _preprocess(annotation_file, image_dir, tmp_path, workers=2)
    reference = CocoImageSet(annotation_file, image_dir, height=H, width=W)
    stored = reference.metas[ROTATED]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want_chw, decoded = reference.load(ROTATED)
    assert (decoded.orig_w, decoded.orig_h) == (stored.orig_h, stored.orig_w) and decoded.scale != stored.scale
    assert manifest["exif_rotated"] == [stored.image_id]
    assert manifest["images"][ROTATED] == dict(decoded._asdict())
    assert manifest["images"][0] == dict(reference.metas[0]._asdict())
    jpg = read_info_file(str(tmp_path / "fsaf_jpeg.info"))
    assert jpg[ROTATED][2:] == (decoded.orig_w, decoded.orig_h)
    assert jpg[0][2:] == (reference.metas[0].orig_w, reference.metas[0].orig_h)
    written = np.fromfile(os.path.join(out, os.path.splitext(stored.file_name)[0] + ".bin"), np.float32)
    assert np.array_equal(written.reshape(3, H, W), want_chw)

    # a rerun keeps every .bin (no decoding) and still knows the rotation, from the header
    _, again = _preprocess(annotation_file, image_dir, tmp_path, workers=1)
    assert again["reused"] == 3 and again["written"] == 0
    assert again["images"] == manifest["images"] and again["exif_rotated"] == manifest["exif_rotated"]


def _network_outputs(metas, out_dir, box):
    """Benchmark-tool outputs with one detection per image: `box` (original pixels) times its scale."""
    os.makedirs(out_dir)
    for meta in metas:
        dets = np.zeros((_max_dets(), DETS_COLUMNS), np.float32)
        dets[0] = [v * meta.scale for v in box] + [0.9]
        labels = np.zeros(_max_dets(), np.int64)
        stem = os.path.splitext(meta.file_name)[0]
        dets.tofile(os.path.join(out_dir, stem + "_1.bin"))
        labels.tofile(os.path.join(out_dir, stem + "_2.bin"))


def _postprocess(annotation_file, outputs, results, *extra):
    assert cli.main(["postprocess", "--annotations", annotation_file, "--outputs", outputs,
                     "--results", results, "--height", str(H), "--width", str(W)] + list(extra)) == 0
    return [r["bbox"] for r in read_results_json(results)]


def test_postprocess_undoes_each_image_s_own_scale(rotated_set, tmp_path):
    annotation_file, image_dir = rotated_set
    bins, manifest = _preprocess(annotation_file, image_dir, tmp_path, workers=1)
    from fsaf_repro.data import ImageMeta
    used = [ImageMeta(**entry) for entry in manifest["images"]]
    box = [4.0, 6.0, 30.0, 36.0]
    outputs = str(tmp_path / "dumpOutput_device0")
    _network_outputs(used, outputs, box)
    want = [box[0], box[1], box[2] - box[0], box[3] - box[1]]

    from_manifest = _postprocess(annotation_file, outputs, str(tmp_path / "a.json"),
                                 "--manifest", os.path.join(bins, "preprocess_manifest.json"))
    for got in from_manifest:
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # the image headers give the same answer without the manifest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        from_headers = _postprocess(annotation_file, outputs, str(tmp_path / "b.json"), "--images", image_dir)
    assert from_headers == from_manifest
    # annotation sizes alone get the rotated image wrong (why the manifest is recorded)
    blind = _postprocess(annotation_file, outputs, str(tmp_path / "c.json"))
    assert blind[0] == from_manifest[0] and blind[ROTATED] != from_manifest[ROTATED]


def test_manifest_from_other_annotations_or_canvas_is_refused(rotated_set, tmp_path, capsys):
    annotation_file, image_dir = rotated_set
    bins, manifest = _preprocess(annotation_file, image_dir, tmp_path, workers=1)
    manifest_path = os.path.join(bins, "preprocess_manifest.json")
    outputs = str(tmp_path / "out")
    from fsaf_repro.data import ImageMeta
    from fsaf_repro.postprocess import metas_from_manifest
    _network_outputs([ImageMeta(**entry) for entry in manifest["images"]], outputs, [1.0, 1.0, 5.0, 5.0])
    other = make_synthetic_coco(str(tmp_path / "other"), num_images=3, seed=9, write_images=False)[0]
    with pytest.raises(DataError, match="preprocess_manifest.json was written for annotations with sha256"):
        metas_from_manifest(manifest_path, CocoImageSet(other, image_dir, height=H, width=W))
    with pytest.raises(DataError, match=r"preprocessed at 96x128, but postprocess is set to 800x1216"):
        metas_from_manifest(manifest_path, CocoImageSet(annotation_file, image_dir))
    shuffled = dict(manifest, images=manifest["images"][::-1])
    shuffled_path = tmp_path / "shuffled.json"
    shuffled_path.write_text(json.dumps(shuffled))
    with pytest.raises(DataError, match="not in increasing id order"):
        metas_from_manifest(str(shuffled_path), CocoImageSet(annotation_file, image_dir, height=H, width=W))
    with pytest.raises(DataError, match="lists image ids not among the 2 images selected"):
        metas_from_manifest(manifest_path, CocoImageSet(annotation_file, image_dir, limit=2, height=H, width=W))
    bad = tmp_path / "bad_manifest.json"
    bad.write_text(json.dumps({"annotation_sha256": "x"}))
    capsys.readouterr()
    # through the command line: exit status 1, the reason on stderr, no results file
    results = str(tmp_path / "z.json")
    assert cli.main(["postprocess", "--annotations", annotation_file, "--outputs", outputs, "--results", results,
                     "--height", str(H), "--width", str(W), "--manifest", str(bad)]) == 1
    assert "bad_manifest.json: top level: lacks 'height', 'width', 'images'" in capsys.readouterr().err
    assert not os.path.exists(results)


def _jpg_info_sizes(image_set, path):
    from fsaf_repro.data import write_info_files
    write_info_files(image_set, jpg_info=str(path))
    return [entry[2:] for entry in read_info_file(str(path))]


def test_decoded_sizes_do_not_depend_on_what_was_read_before(rotated_set, tmp_path):
    """The sizes an image is transformed with are returned by each call, never left on the set: a jpg info
    file, the report and the manifest are the same for a fresh set and one whose rotated image was read."""
    from fsaf_repro.data import write_bins, write_manifest
    annotation_file, image_dir = rotated_set
    fresh = CocoImageSet(annotation_file, image_dir, height=H, width=W)
    read_first = CocoImageSet(annotation_file, image_dir, height=H, width=W)
    annotated = list(fresh.metas)
    stored = annotated[ROTATED]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, decoded = read_first.load(ROTATED)
        want = [(m.orig_w, m.orig_h) for m in annotated]
        want[ROTATED] = (stored.orig_h, stored.orig_w)
        # a set nothing was read from writes the decoded sizes too (the headers tell them)
        assert _jpg_info_sizes(fresh, tmp_path / "fresh.info") == want
        assert _jpg_info_sizes(read_first, tmp_path / "read_first.info") == want
        assert fresh.decoded_metas() == read_first.decoded_metas() == [annotated[0], decoded, annotated[2]]
        # write_bins in this process returns the sizes it used and leaves the set as built
        report = write_bins(fresh, str(tmp_path / "bins"), workers=1, progress=False)
    assert report.metas == [annotated[0], decoded, annotated[2]]
    assert fresh.metas == read_first.metas == annotated
    manifest = write_manifest(str(tmp_path / "manifest.json"), fresh, report)
    assert manifest["exif_rotated"] == [stored.image_id]
    assert manifest["images"] == [dict(m._asdict()) for m in report.metas]
