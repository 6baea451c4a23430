"""The pytest-benchmark suite under benchmarks/: its ratio arithmetic (benchmarks/ratios.py), the ratios
written into --benchmark-json and the terminal summary, and that `-m unit` / `-m "unit or
acceptance"` never run a benchmark."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARKS = os.path.join(ROOT, "benchmarks")


def load_ratios():
    spec = importlib.util.spec_from_file_location("fsaf_bench_ratios", os.path.join(BENCHMARKS, "ratios.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ratios = load_ratios()


def fake_benchmark(best=None, median=None, **extra_info):
    """What RatioBook reads of a pytest-benchmark fixture: group, extra_info, stats.stats."""
    stats = None
    if best is not None:
        stats = SimpleNamespace(stats=SimpleNamespace(min=best, median=median or best, data=[best]))
    return SimpleNamespace(group=None, extra_info=dict(extra_info), stats=stats)


def test_speed_ratio_is_baseline_time_over_candidate_time_and_lands_in_extra_info():
    group = ratios.RatioGroup("g", baseline="slow", candidates={"fast": ratios.Goal(">=", 3.0)}, source="issue x")
    book = ratios.RatioBook()
    slow, fast = fake_benchmark(2.0, 2.4), fake_benchmark(0.5, 1.2)
    book.join(slow, group, "slow")
    book.join(fast, group, "fast")
    (row,) = book.settle()
    assert slow.group == fast.group == "g"
    assert row["ratio"] == pytest.approx(4.0) and row["ratio_median"] == pytest.approx(2.0)
    assert row["goal"] == ">= 3" and row["goal_met"] is True and row["missing"] == []
    assert fast.extra_info["ratio"] == pytest.approx(4.0) and fast.extra_info["goal_met"] is True
    assert fast.extra_info["source"] == "issue x" and fast.extra_info["role"] == "fast"
    assert slow.extra_info["ratios"]["fast"]["ratio"] == pytest.approx(4.0)


def test_seconds_and_extra_info_figures_and_upper_bound_goals():
    cost = ratios.RatioGroup("cost", baseline="a", candidates={"b": None}, source="s", figure="seconds")
    memory = ratios.RatioGroup("memory", baseline="small", candidates={"large": ratios.Goal("<=", 1.2)},
                               source="s", figure="peak_rss_kib")
    book = ratios.RatioBook()
    book.join(fake_benchmark(1.0), cost, "a")
    book.join(fake_benchmark(3.0), cost, "b")
    book.join(fake_benchmark(9.0, peak_rss_kib=1000), memory, "small")
    book.join(fake_benchmark(0.1, peak_rss_kib=1300), memory, "large")
    by_group = {row["group"]: row for row in book.settle()}
    assert by_group["cost"]["ratio"] == pytest.approx(3.0) and by_group["cost"]["goal_met"] is None
    # an extra_info figure ignores the timing, and 1.3 > 1.2 fails an upper-bound goal
    assert by_group["memory"]["ratio"] == pytest.approx(1.3) and by_group["memory"]["goal_met"] is False
    assert by_group["memory"]["ratio_median"] is None


def test_a_member_not_measured_gives_no_ratio_and_says_which():
    group = ratios.RatioGroup("g", baseline="base", candidates={"cand": ratios.Goal(">=", 1.0)}, source="s")
    book = ratios.RatioBook()
    book.join(fake_benchmark(1.0), group, "base")
    book.join(fake_benchmark(None), group, "cand")  # --benchmark-disable, or failed before timing
    (row,) = book.settle()
    assert row["ratio"] is None and row["goal_met"] is None and row["missing"] == ["cand"]
    assert any("no value for cand: not measured: cand" in line for line in book.summary_lines())


def test_wrong_roles_goals_and_duplicate_groups_are_refused():
    group = ratios.RatioGroup("g", baseline="base", candidates={"cand": None}, source="s")
    book = ratios.RatioBook()
    with pytest.raises(ValueError, match="'other' is not a role of group 'g'"):
        book.join(fake_benchmark(1.0), group, "other")
    book.join(fake_benchmark(1.0), group, "base")
    with pytest.raises(ValueError, match="two different groups are named 'g'"):
        book.join(fake_benchmark(1.0), ratios.RatioGroup("g", "base", {"cand": None}, "s"), "cand")
    with pytest.raises(ValueError, match="comparison '>'"):
        ratios.Goal(">", 1)
    with pytest.raises(ValueError, match="baseline 'a' is also a candidate"):
        ratios.RatioGroup("h", "a", {"a": None}, "s")


def test_a_figure_is_a_row_of_its_group_and_an_entry_of_extra_info():
    group = ratios.RatioGroup("g", baseline="base", candidates={"cand": None}, source="s")
    book = ratios.RatioBook()
    book.join(fake_benchmark(1.0), group, "base")
    cand = fake_benchmark(1.0)
    book.join(cand, group, "cand")
    book.add_figure(cand, "bin_size", 3.5, ratios.Goal(">=", 4.0), "issue 4", "float bytes / uint8 bytes")
    rows = book.settle()
    assert [(r["group"], r["candidate"]) for r in rows] == [("g", "cand"), ("g", "bin_size")]
    assert rows[1]["goal_met"] is False and cand.extra_info["figures"]["bin_size"]["ratio"] == 3.5


def run_pytest(args, cwd):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider"] + args, cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def collected(output):
    return [line for line in output.splitlines() if "::" in line]


def test_unit_and_acceptance_selections_never_run_a_benchmark():
    with open(os.path.join(ROOT, "pyproject.toml")) as handle:
        pyproject = handle.read()
    # a run from the root collects tests/ only; naming benchmarks/ with -m unit deselects every benchmark
    assert re.search(r'^testpaths = \["tests"\]$', pyproject, re.M)
    everything = run_pytest(["--collect-only", "-q", "benchmarks"], ROOT)
    benches = run_pytest(["--collect-only", "-q", "-m", "bench", "benchmarks"], ROOT)
    assert everything.returncode == 0, everything.stdout
    assert len(collected(benches.stdout)) == len(collected(everything.stdout)) > 20
    for expression in ("unit", "unit or acceptance", "acceptance"):
        result = run_pytest(["--collect-only", "-q", "-m", expression, "benchmarks"], ROOT)
        assert collected(result.stdout) == [], result.stdout
        assert f"{len(collected(everything.stdout))} deselected" in result.stdout
    # both folders named: tests/conftest.py's marker-by-folder hook sees the benchmarks and leaves them alone
    both = run_pytest(["--collect-only", "-q", "-m", "unit or acceptance", "tests/unit/test_tox.py", "benchmarks"],
                      ROOT)
    assert collected(both.stdout) and all(line.startswith("tests/unit/test_tox.py::")
                                          for line in collected(both.stdout)), both.stdout


def test_the_standalone_scripts_are_gone_and_every_module_declares_its_groups():
    names = sorted(os.listdir(BENCHMARKS))
    assert [n for n in names if n.startswith("bench_") and n.endswith(".py")] == []
    modules = [n for n in names if n.startswith("test_bench_") and n.endswith(".py")]
    # every module is a row of README's benchmark table, and every row a module
    with open(os.path.join(ROOT, "README.md")) as handle:
        listed = sorted(set(re.findall(r"^\| `(test_bench_\w+\.py)` \|", handle.read(), re.MULTILINE)))
    assert modules == listed
    for name in modules:
        with open(os.path.join(BENCHMARKS, name)) as handle:
            text = handle.read()
        assert "RatioGroup(" in text and "ratio_book.join(" in text, name


BENCH_MODULE = """
import time

import pytest

from ratios import Goal, RatioGroup

TIMED = RatioGroup("timed", baseline="slow", candidates={"fast": Goal(">=", 1.5)}, source="a test of the suite")
FIGURE = RatioGroup("memory", baseline="small", candidates={"large": Goal("<=", 1.2)}, source="issue 4",
                    figure="peak_rss_kib")


@pytest.mark.parametrize("role,seconds", [("slow", 0.04), ("fast", 0.01)])
def test_timed(benchmark, ratio_book, role, seconds):
    ratio_book.join(benchmark, TIMED, role)
    benchmark.pedantic(time.sleep, args=(seconds,), rounds=3, iterations=1)


@pytest.mark.parametrize("role,kib", [("small", 1000), ("large", 1500)])
def test_figure(benchmark, ratio_book, role, kib):
    ratio_book.join(benchmark, FIGURE, role)
    benchmark.pedantic(int, rounds=1)
    benchmark.extra_info["peak_rss_kib"] = kib
"""


def test_ratios_land_in_the_benchmark_json_and_the_terminal_summary(tmp_path):
    for name in ("conftest.py", "ratios.py"):
        shutil.copy(os.path.join(BENCHMARKS, name), str(tmp_path / name))
    (tmp_path / "test_bench_demo.py").write_text(textwrap.dedent(BENCH_MODULE))
    out = tmp_path / "bench.json"
    result = run_pytest(["--rootdir", str(tmp_path), "-W", "ignore::pytest.PytestUnknownMarkWarning",
                         "--benchmark-json", str(out), str(tmp_path)], str(tmp_path))
    assert result.returncode == 0, result.stdout
    data = json.loads(out.read_text())
    by_name = {bench["name"]: bench for bench in data["benchmarks"]}
    fast = by_name["test_timed[fast-0.01]"]["extra_info"]
    assert by_name["test_timed[fast-0.01]"]["group"] == "timed" and fast["goal"] == ">= 1.5"
    assert fast["ratio"] > 1.5 and fast["goal_met"] is True and fast["source"] == "a test of the suite"
    large = by_name["test_figure[large-1500]"]["extra_info"]
    assert large["ratio"] == pytest.approx(1.5) and large["goal_met"] is False
    assert by_name["test_figure[small-1000]"]["extra_info"]["ratios"]["large"]["ratio"] == pytest.approx(1.5)
    assert [(row["group"], row["candidate"]) for row in data["fsaf_ratios"]] == [("timed", "fast"),
                                                                                ("memory", "large")]
    summary = result.stdout[result.stdout.index("fsaf-repro ratios"):]
    assert re.search(r"^memory +large / small +peak_rss_kib +1\.500 +- +<= 1\.2 +NO +issue 4$", summary, re.M), summary
    assert re.search(r"^timed +fast / slow +speed +\d+\.\d{3} .*>= 1\.5 +yes +a test of the suite$", summary, re.M)
