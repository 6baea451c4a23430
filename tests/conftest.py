"""Shared test configuration: markers by directory, acceptance options, generated fixtures."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    # Every test under tests/unit is `unit`, under tests/acceptance `acceptance`: the marker follows
    # the directory, so a test cannot be forgotten by `pytest -m unit`.
    for item in items:
        path = str(item.fspath)
        if os.sep + "unit" + os.sep in path:
            item.add_marker(pytest.mark.unit)
        elif os.sep + "acceptance" + os.sep in path:
            item.add_marker(pytest.mark.acceptance)


# ------------------------------------------------------------------------------------------------
# Model fixtures: seeded weights written in the official checkpoint layout, so every test goes
# through the real loader; exports cached per session (an R50-FPN export takes seconds).



@pytest.fixture(scope="session")
def seeded_checkpoint(tmp_path_factory):
    from fsaf_repro.checkpoint import write_seeded_checkpoint

    path = tmp_path_factory.mktemp("checkpoint") / "fsaf_seeded_0.pth"
    return str(write_seeded_checkpoint(str(path), seed=0))


@pytest.fixture(scope="session")
def seeded_detector(seeded_checkpoint):
    from fsaf_repro.checkpoint import load_detector

    return load_detector(seeded_checkpoint)


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory, seeded_checkpoint):
    """export_cache(flavour, height, width, batch_size=None, input_dtype="float32") -> .onnx path."""
    from fsaf_repro.export import export_onnx

    directory = tmp_path_factory.mktemp("onnx")
    made = {}

    def get(flavour, height, width, batch_size=None, input_dtype="float32"):
        key = (flavour, height, width, batch_size, input_dtype)
        if key not in made:
            name = "fsaf_{}_{}x{}_bs{}_{}.onnx".format(flavour, height, width, batch_size or "dyn", input_dtype)
            path = str(directory / name)
            export_onnx(seeded_checkpoint, path, flavour=flavour, height=height, width=width,
                        batch_size=batch_size, input_dtype=input_dtype)
            made[key] = path
        return made[key]

    return get
