"""Planning probes for matplotlib and the report draws its plots without touching matplotlib's global
state: no `matplotlib.use`, no pyplot (a caller's interactive backend and open figures stay as they are)."""
import os
import sys

import pytest

from fsaf_repro import report
from tests.unit.test_report import PNG_MAGIC, context  # noqa: F401 (the report test's fixture)

pytestmark = pytest.mark.unit


@pytest.fixture
def matplotlib_untouchable(monkeypatch):
    matplotlib = pytest.importorskip("matplotlib", reason="the `plots` extra (matplotlib) is not installed")

    def refuse(*args, **kwargs):
        raise AssertionError("matplotlib.use called: the caller's backend would be switched")

    monkeypatch.setattr(matplotlib, "use", refuse)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # importing pyplot now fails
    return matplotlib


def test_the_probe_switches_no_backend(matplotlib_untouchable):
    assert report.plots_availability() == (True, "")


def test_the_plots_are_drawn_without_pyplot_or_a_backend_switch(matplotlib_untouchable, context):  # noqa: F811
    ctx, image_set = context
    made = report.write_report(ctx.run_dir, ctx, image_set=image_set)
    assert made["record"]["plots"] == ["plots/fps_by_batch.png", "plots/per_class_ap.png"]
    for rel in made["record"]["plots"]:
        with open(os.path.join(ctx.run_dir, rel), "rb") as handle:
            assert handle.read(8) == PNG_MAGIC
