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
