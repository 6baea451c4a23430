"""Ratio groups of the benchmark suite: a baseline and its candidates timed side by side, and the goal
each candidate is judged by.

Every figure this project claims is a ratio measured in one run (issue 3, issue 4), because absolute
timings do not carry across machines. A `RatioGroup` is one pytest-benchmark group: the test of each
member joins it (`RatioBook.join`), which names the benchmark's group and role; once the group's
members have run, `RatioBook.settle` computes each candidate's ratio over the baseline and writes it,
with the goal and its source, into the benchmarks' `extra_info`, so it lands in `--benchmark-json`
beside the timings. benchmarks/conftest.py prints the same rows in the terminal summary.

The figure a group compares:
- "speed": 1 / seconds of a round (rounds of a group do the same work), so ratio > 1 is faster;
- "seconds": seconds of a round, for costs (ratio > 1 is slower);
- any other name: a number the test puts in `extra_info[name]` (peak RSS, a time measured inside a
  subprocess), ratio = candidate / baseline.
Timed figures use the best round (other processes on a shared machine only ever add time) and report
the median-round ratio beside it.
"""
import os
from collections import namedtuple

TIMED_FIGURES = ("speed", "seconds")
COMPARISONS = (">=", "<=")


class Goal(namedtuple("Goal", "comparison value")):
    """A candidate's goal: ratio `comparison` value, e.g. Goal(">=", 1.3)."""

    def __new__(cls, comparison, value):
        if comparison not in COMPARISONS:
            raise ValueError(f"goal comparison {comparison!r} is not one of {COMPARISONS}")
        return super().__new__(cls, comparison, float(value))

    def met_by(self, ratio):
        if ratio is None:
            return None
        return ratio >= self.value if self.comparison == ">=" else ratio <= self.value

    def __str__(self):
        return f"{self.comparison} {self.value:g}"


class RatioGroup:
    """One pytest-benchmark group.

    name: the group's name in pytest-benchmark's table and JSON; baseline: the role every ratio is
    over; candidates: {role: Goal or None (a figure recorded without a goal)}; source: where the goal
    (or the question the figure answers) comes from; figure: what is compared (module docstring).
    """

    def __init__(self, name, baseline, candidates, source, figure="speed"):
        if baseline in candidates:
            raise ValueError(f"group {name!r}: the baseline {baseline!r} is also a candidate")
        if not candidates:
            raise ValueError(f"group {name!r} has no candidate")
        self.name = name
        self.baseline = baseline
        self.candidates = dict(candidates)
        self.source = source
        self.figure = figure

    @property
    def roles(self):
        return (self.baseline,) + tuple(self.candidates)

    def definition(self, candidate):
        if self.figure == "speed":
            return f"speed({candidate}) / speed({self.baseline}), speed = 1 / seconds of a round"
        if self.figure == "seconds":
            return f"seconds({candidate}) / seconds({self.baseline}) of a round"
        return f"{self.figure}({candidate}) / {self.figure}({self.baseline})"


def round_seconds(benchmark, statistic):
    """`statistic` ("min", "median") of a benchmark's round times, or None when it was not timed
    (--benchmark-disable, or the test failed before measuring)."""
    metadata = getattr(benchmark, "stats", None)
    if not metadata:
        return None
    stats = getattr(metadata, "stats", None)
    if stats is None or not getattr(stats, "data", None):
        return None
    return float(getattr(stats, statistic))


def figure_of(group, benchmark, statistic="min"):
    if benchmark is None:
        return None
    if group.figure in TIMED_FIGURES:
        seconds = round_seconds(benchmark, statistic)
        if seconds is None or seconds <= 0:
            return None
        return 1.0 / seconds if group.figure == "speed" else seconds
    if statistic != "min":  # an extra_info figure is one number: no median beside it
        return None
    value = benchmark.extra_info.get(group.figure)
    return None if value is None else float(value)


def ratio(candidate_figure, baseline_figure):
    if candidate_figure is None or baseline_figure is None or baseline_figure == 0:
        return None
    return candidate_figure / baseline_figure


class RatioBook:
    """The ratio groups of one pytest session and the benchmark fixture of each member."""

    def __init__(self):
        self.groups = {}
        self.members = {}
        self.figures = []
        self.load_before = _load_average()

    def join(self, benchmark, group, role):
        """Make `benchmark` (the pytest-benchmark fixture) the `role` member of `group`: call it before
        measuring (pytest-benchmark reads the group name when the first round starts)."""
        if role not in group.roles:
            raise ValueError(f"{role!r} is not a role of group {group.name!r}: {group.roles}")
        known = self.groups.setdefault(group.name, group)
        if known is not group:
            raise ValueError(f"two different groups are named {group.name!r}")
        benchmark.group = group.name
        benchmark.extra_info.update({"role": role, "baseline": group.baseline, "figure": group.figure,
                                     "source": group.source})
        self.members.setdefault(group.name, {})[role] = benchmark

    def add_figure(self, benchmark, name, value, goal, source, definition):
        """A ratio measured otherwise than by timing (bytes, a match rate) after `benchmark`'s group has
        run: a row of the table, and an entry of `benchmark.extra_info["figures"]`."""
        row = {"group": benchmark.group, "candidate": name, "baseline": None, "figure": name,
               "ratio": None if value is None else float(value), "ratio_median": None, "ratio_of": definition,
               "goal": str(goal) if goal else None, "goal_met": goal.met_by(value) if goal else None,
               "source": source, "missing": [] if value is not None else [name]}
        self.figures = [f for f in self.figures if (f["group"], f["candidate"]) != (row["group"], name)] + [row]
        benchmark.extra_info.setdefault("figures", {})[name] = {
            key: row[key] for key in ("ratio", "ratio_of", "goal", "goal_met", "source")}
        return row

    def rows(self):
        """One row per candidate of every group joined, in the order the groups were joined, each group's
        figures (add_figure) after its candidates."""
        rows = []
        for name, group in self.groups.items():
            members = self.members.get(name, {})
            base = members.get(group.baseline)
            for candidate, goal in group.candidates.items():
                bench = members.get(candidate)
                best = ratio(figure_of(group, bench), figure_of(group, base))
                median = ratio(figure_of(group, bench, "median"), figure_of(group, base, "median"))
                rows.append({
                    "group": name, "candidate": candidate, "baseline": group.baseline, "figure": group.figure,
                    "ratio": best, "ratio_median": median, "ratio_of": group.definition(candidate),
                    "goal": str(goal) if goal else None, "goal_met": goal.met_by(best) if goal else None,
                    "source": group.source,
                    "missing": [role for role in (group.baseline, candidate) if figure_of(group, members.get(role))
                                is None],
                })
            rows.extend(f for f in self.figures if f["group"] == name)
        rows.extend(f for f in self.figures if f["group"] not in self.groups)
        return rows

    def settle(self):
        """Write every ratio computed so far into its benchmarks' extra_info; returns the rows."""
        rows = self.rows()
        for row in rows:
            if row["baseline"] is None:  # a figure: written into extra_info by add_figure
                continue
            members = self.members.get(row["group"], {})
            fields = {key: row[key] for key in ("ratio", "ratio_median", "ratio_of", "goal", "goal_met")}
            if row["candidate"] in members:
                members[row["candidate"]].extra_info.update(fields)
            if row["baseline"] in members:
                members[row["baseline"]].extra_info.setdefault("ratios", {})[row["candidate"]] = fields
        return rows

    def summary_lines(self):
        rows = self.settle()
        if not rows:
            return []
        header = ("group", "candidate / baseline", "figure", "ratio", "median", "goal", "met", "source")
        table = [header]
        for row in rows:
            pair = row["candidate"] if row["baseline"] is None else f"{row['candidate']} / {row['baseline']}"
            table.append((row["group"], pair, row["figure"],
                          _number(row["ratio"]), _number(row["ratio_median"]), row["goal"] or "-",
                          {True: "yes", False: "NO", None: "-"}[row["goal_met"]], row["source"]))
        widths = [max(len(str(line[i])) for line in table) for i in range(len(header) - 1)]
        lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)) + "  " + str(line[-1])
                 for line in table]
        for row in rows:
            if row["missing"]:
                lines.append(f"{row['group']}: no value for {row['candidate']}: not measured: "
                             f"{', '.join(row['missing'])}")
        lines.append("ratio: the candidate's figure over the baseline's (speed = 1 / seconds, so > 1 is faster), "
                     "best rounds; median: the same over median rounds")
        lines.append(f"load average (1, 5, 15 min) at the start: {self.load_before}, now: {_load_average()} "
                     f"on {os.cpu_count()} CPUs: a loaded machine makes every ratio noisy")
        return lines


def _number(value):
    return "-" if value is None else f"{value:.3f}"


def _load_average():
    try:
        return tuple(round(value, 2) for value in os.getloadavg())
    except (AttributeError, OSError):  # not on every platform
        return None
