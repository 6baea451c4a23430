"""fileio.atomic_output, the package's one atomic write (the results json, the ONNX export and every
atomic_write_* use it): a reader sees the old file or the whole new one, never a part."""
import os

import pytest

from fsaf_repro import fileio, results_json

pytestmark = pytest.mark.unit


def test_a_failed_write_leaves_the_old_file_and_no_part_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="mid-write"):
        with fileio.atomic_output(str(target)) as part:
            with open(part, "w") as handle:
                handle.write("half")
            raise RuntimeError("mid-write")
    assert target.read_text() == "old" and os.listdir(str(tmp_path)) == ["out.json"]


def test_a_finished_write_replaces_the_file_in_one_step_and_names_the_target_on_os_errors(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with fileio.atomic_output(str(target)) as part:
        assert os.path.dirname(part) == str(tmp_path / "sub") and part != str(target)
        with open(part, "w") as handle:
            handle.write("new")
        assert not target.exists()
    assert target.read_text() == "new" and os.listdir(str(tmp_path / "sub")) == ["out.json"]
    with pytest.raises(OSError) as failed:
        with fileio.atomic_output(str(target)):
            pass  # nothing written: the rename of a missing part file fails
    assert failed.value.filename == str(target) and target.read_text() == "new"


def test_the_streamed_results_json_is_written_through_it(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("[]")

    def results():
        yield {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        results_json.write_results_streaming(str(target), results())
    assert target.read_text() == "[]" and os.listdir(str(tmp_path)) == ["results.json"]
