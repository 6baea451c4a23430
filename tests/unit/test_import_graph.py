"""Guards on the package's shape (docs/architecture.md): no import cycle between fsaf_repro's modules,
none between its packages (fsaf_repro's own modules, fsaf_repro.backends, fsaf_repro.cli,
fsaf_repro.data, each subpackage one node), and the command line kept in fsaf_repro/cli/ (no library
module imports argparse).

The import graph is the one scripts/architecture_figures.py measures (imports inside functions
included, `from . import x` counting x when x is a module), so the test and the published figures
agree.
"""
import ast
import importlib.util
import os

import pytest

import fsaf_repro

PACKAGE_DIR = os.path.dirname(os.path.abspath(fsaf_repro.__file__))
FIGURES_SCRIPT = os.path.join(os.path.dirname(PACKAGE_DIR), "scripts", "architecture_figures.py")
def _figures_module():
    spec = importlib.util.spec_from_file_location("architecture_figures", FIGURES_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures():
    return _figures_module()


@pytest.fixture(scope="module")
def graph(figures):
    return figures.import_graph(PACKAGE_DIR)


def test_the_graph_sees_the_whole_package_and_its_edges(graph):
    # a graph that lost its modules or edges would pass the cycle test below vacuously
    assert {"fsaf_repro.cli", "fsaf_repro.cli.args", "fsaf_repro.results_json", "fsaf_repro.tools",
            "fsaf_repro.backends", "fsaf_repro.backends.base", "fsaf_repro.data.coco"} <= set(graph)
    assert "fsaf_repro.backends.base" in graph["fsaf_repro.backends"]
    assert "fsaf_repro.results_json" in graph["fsaf_repro.evaluate"]
    assert "fsaf_repro.tools" in graph["fsaf_repro.convert"]


def test_the_cycle_finder_names_a_cycle(figures):
    # the finder itself, on a graph with a known cycle (a -> b -> c -> a) and a module outside it
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert figures.strongly_connected(graph) == [["a", "b", "c"]]


def test_no_import_cycle_between_package_modules(figures, graph):
    cycles = figures.strongly_connected(graph)
    described = ["{} (edges: {})".format(" <-> ".join(cycle), "; ".join(
        "{} -> {}".format(m, ", ".join(sorted(graph[m] & set(cycle)))) for m in cycle)) for cycle in cycles]
    assert not cycles, "import cycles in fsaf_repro: " + " | ".join(described)


SUBPACKAGES = ("fsaf_repro.backends", "fsaf_repro.cli", "fsaf_repro.data")


def test_the_package_graph_collapses_each_subpackage(figures, graph):
    packages = figures.package_graph(graph)
    assert set(SUBPACKAGES) <= set(packages)
    assert not any(node.startswith(tuple(p + "." for p in SUBPACKAGES)) for node in packages)
    # the root's own modules stay nodes, with their edges into the subpackages
    assert "fsaf_repro.data" in packages["fsaf_repro.runner"]
    assert "fsaf_repro.errors" in packages["fsaf_repro.backends"]


def test_the_package_graph_sees_a_cycle_no_module_closes(figures):
    # the shape perf.py had: perf -> backends.ais_bench_cli, backends.benchmark_tool -> perf; no module
    # cycle, but a cycle between the root's perf and the backends package
    graph = {"pkg": set(), "pkg.perf": {"pkg.backends.ais"}, "pkg.backends": set(),
             "pkg.backends.ais": set(), "pkg.backends.bench": {"pkg.perf"}}
    assert figures.strongly_connected(graph) == []
    assert figures.strongly_connected(figures.package_graph(graph)) == [["pkg.backends", "pkg.perf"]]


def test_no_import_cycle_between_packages(figures, graph):
    packages = figures.package_graph(graph)
    cycles = figures.strongly_connected(packages)
    members = set(node for cycle in cycles for node in cycle)
    edges = sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                   if {figures.package_of(module, SUBPACKAGES), figures.package_of(target, SUBPACKAGES)} <= members
                   and figures.package_of(module, SUBPACKAGES) != figures.package_of(target, SUBPACKAGES))
    assert not cycles, "import cycles between fsaf_repro's packages: {} ({})".format(
        " | ".join(" <-> ".join(c) for c in cycles), "; ".join(edges))


def _imports_argparse(path):
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "argparse":
            return True
    return False


def _package_modules(figures):
    """{module name: path}, from the figures script's own listing of the package."""
    return {name: path for name, (path, _) in figures.package_sources(PACKAGE_DIR).items()}


def test_only_the_cli_package_imports_argparse(figures):
    modules = _package_modules(figures)
    outside = sorted(name for name, path in modules.items()
                     if not (name == "fsaf_repro.cli" or name.startswith("fsaf_repro.cli."))
                     and _imports_argparse(path))
    assert not outside, "library modules importing argparse (their verbs belong in fsaf_repro/cli/): {}".format(
        ", ".join(outside))
    # and the CLI package does, so the check above is not looking at the wrong files
    assert _imports_argparse(modules["fsaf_repro.cli"])


def test_every_verb_module_defines_register():
    from fsaf_repro import cli
    for name in cli.VERB_MODULES:
        module = importlib.import_module("fsaf_repro.cli." + name)
        assert callable(getattr(module, "register", None)), name


def _over_limit(figures, package_dir):
    return figures.figures(str(package_dir))[f"modules_over_{figures.LARGE_MODULE_LINES}_lines"]


def test_no_module_over_the_size_limit(figures):
    # split a module by concern rather than raising the limit (docs/architecture.md, "Guards on the shape")
    assert _over_limit(figures, PACKAGE_DIR) == []


def test_the_size_figure_names_a_module_one_line_over_the_limit(figures, tmp_path):
    # the check above would pass vacuously if the figure never listed anything
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    limit = figures.LARGE_MODULE_LINES
    (package / "at_limit.py").write_text("x = 1\n" * limit)
    (package / "over_limit.py").write_text("x = 1\n" * (limit + 1))
    assert _over_limit(figures, package) == [f"pkg.over_limit ({limit + 1})"]
