"""Shape figures of the fsaf_repro package (docs/architecture.md), from its source alone: one JSON object.

    python scripts/architecture_figures.py [PACKAGE_DIR]      # default: fsaf_repro/ beside this script

Figures: the longest function (name, lines), the number of functions over 60 lines, the import
cycles between the package's modules (strongly connected components of the import graph, imports
inside functions included) and between its packages (each subpackage one node), the largest module
(lines) and the modules over 500 lines, the number of `.format(` calls, the number of modules importing
argparse, and the number of imports done inside functions; the largest parameter list (and the functions
over 10 parameters), the places each `reproduce` option is written, and the label substring matches. Runs
on Python 3.7+ with no dependency, so the same script measures an old checkout and a new one.
"""
import ast
import json
import os
import sys

LONG_FUNCTION_LINES = 60
# The module size limit (docs/architecture.md); tests/unit/test_import_graph.py fails on a module over it.
LARGE_MODULE_LINES = 500
MANY_PARAMETERS = 10
# A label substring match: `"text" in X` where X is a label (a name, attribute or string subscript
# called one of these), or where the text is a parenthesised label fragment such as "(om".
LABEL_NAMES = ("label", "labels", "lb", "other", "reference", "precision")


def module_name(package_dir, path):
    rel = os.path.relpath(path, os.path.dirname(package_dir))[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def resolve(importer, is_package, level, target):
    """The absolute module a relative import names."""
    if level == 0:
        return target
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(tree, name, is_package, modules):
    """Package modules imported by a module (a `from x import y` counts y when y is a module)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(name, is_package, node.level, node.module)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def strongly_connected(graph):
    """Tarjan's algorithm, iterative enough for a package of this size: the components of size > 1."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(result)


def parameter_count(node):
    """Named parameters of a function, self/cls left out (*args and **kwargs count one each)."""
    args = node.args
    names = [a.arg for a in getattr(args, "posonlyargs", []) + args.args + args.kwonlyargs]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return len([n for n in names if n not in ("self", "cls")])


def _label_like(node):
    if isinstance(node, ast.Name):
        return node.id in LABEL_NAMES
    if isinstance(node, ast.Attribute):
        return node.attr in LABEL_NAMES
    if isinstance(node, ast.Subscript):
        key = node.slice.value if isinstance(node.slice, ast.Index) else node.slice  # ast.Index: 3.7, 3.8
        return isinstance(key, ast.Constant) and key.value in LABEL_NAMES
    return False


def label_substring_matches(tree):
    """Lines of `"text" in <a label>` tests (see LABEL_NAMES)."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant)
                and isinstance(node.left.value, str) and isinstance(node.ops[0], (ast.In, ast.NotIn))):
            continue
        right = node.comparators[0]
        if _label_like(right) or (node.left.value.startswith("(") and not isinstance(right, (ast.Tuple, ast.List))):
            found.append(node.lineno)
    return found


def reproduce_option_places(trees):
    """{option: places written} over the modules named *reproduce*: a function parameter, a class
    field, a key of a module-level dict (a table of option kinds) or a `--flag` string of that name.
    The options: ReproduceOptions' fields, or (a tree before it) resolve_config's parameters."""
    places = dict((name, 0) for name in _reproduce_options(trees))
    for tree in trees.values():
        written = [name for node in ast.walk(tree) for name in _written_names(node)]
        for node in tree.body:  # a module-level table keyed by option name (a dict of option kinds)
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                written += [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
        for name in written:
            if name in places:
                places[name] += 1
    return places


def _reproduce_options(trees):
    nodes = [node for tree in trees.values() for node in ast.walk(tree)]
    options = {item.target.id for node in nodes if isinstance(node, ast.ClassDef) and node.name == "ReproduceOptions"
               for item in node.body if isinstance(item, ast.AnnAssign)}
    return options or {a.arg for node in nodes if isinstance(node, ast.FunctionDef) and node.name == "resolve_config"
                       for a in node.args.args}


def _written_names(node):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return [a.arg for a in node.args.args + node.args.kwonlyargs]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("--"):
        return [node.value[2:].replace("-", "_")]
    return []


def package_sources(package_dir):
    """{module name: (path, is_package)} of every .py file under the package folder."""
    sources = {}
    for folder, _, files in os.walk(package_dir):
        for file_name in files:
            if file_name.endswith(".py"):
                path = os.path.join(folder, file_name)
                sources[module_name(package_dir, path)] = (path, file_name == "__init__.py")
    return sources


def figures(package_dir):
    package_dir = os.path.abspath(package_dir)
    sources = package_sources(package_dir)
    modules = set(sources)
    graph, functions, largest, large_modules = {}, [], ("", 0), []
    format_calls = argparse_modules = nested_imports = 0
    parameters, label_matches, reproduce_trees = [], [], {}
    for name, (path, is_package) in sorted(sources.items()):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        tree = ast.parse(text)
        lines = len(text.splitlines())
        if lines > LARGE_MODULE_LINES:
            large_modules.append(f"{name} ({lines})")
        if lines > largest[1]:
            largest = (name, lines)
        graph[name] = imports_of(tree, name, is_package, modules)
        label_matches += [f"{name}:{line}" for line in label_substring_matches(tree)]
        if "reproduce" in name:
            reproduce_trees[name] = tree
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                parameters.append((f"{name}.{node.name}", parameter_count(node)))
                functions.append((f"{name}.{node.name}", node.end_lineno - node.lineno + 1
                                  if hasattr(node, "end_lineno") else _span(node)))
                nested_imports += sum(1 for inner in ast.walk(node)
                                      if isinstance(inner, (ast.Import, ast.ImportFrom)))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "format"):
                format_calls += 1
        if any(isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names)
               for node in ast.walk(tree)):
            argparse_modules += 1
    longest = max(functions, key=lambda item: item[1]) if functions else ("", 0)
    cycles = strongly_connected(graph)
    package_cycles = strongly_connected(package_graph(graph))
    widest = max(parameters, key=lambda item: item[1]) if parameters else ("", 0)
    places = reproduce_option_places(reproduce_trees)
    return {
        "package": package_dir,
        "longest_function": {"name": longest[0], "lines": longest[1]},
        f"functions_over_{LONG_FUNCTION_LINES}_lines": sum(1 for _, n in functions
                                                                   if n > LONG_FUNCTION_LINES),
        "import_cycles": len(cycles), "import_cycle_members": cycles,
        "package_import_cycles": len(package_cycles), "package_import_cycle_members": package_cycles,
        "largest_module": {"name": largest[0], "lines": largest[1]},
        f"modules_over_{LARGE_MODULE_LINES}_lines": large_modules,
        "format_calls": format_calls,
        "modules_importing_argparse": argparse_modules,
        "imports_inside_functions": nested_imports,
        "largest_parameter_list": {"name": widest[0], "parameters": widest[1]},
        f"functions_over_{MANY_PARAMETERS}_parameters": sorted(f"{f} ({n})" for f, n in parameters
                                                                if n > MANY_PARAMETERS),
        "reproduce_option_places": {"options": len(places), "total": sum(places.values()),
                                    "most": sorted(places.items(), key=lambda item: (-item[1], item[0]))[:3]},
        "label_substring_matches": len(label_matches), "label_substring_match_lines": label_matches,
    }


def _span(node):
    """Lines of a function on Pythons without end_lineno (3.7): up to its deepest line."""
    return max(getattr(inner, "lineno", node.lineno) for inner in ast.walk(node)) - node.lineno + 1


def import_graph(package_dir):
    """{module: set of package modules it imports}: what the import-cycle test reads."""
    sources = package_sources(os.path.abspath(package_dir))
    modules = set(sources)
    result = {}
    for name, (path, is_package) in sources.items():
        with open(path, encoding="utf-8") as handle:
            result[name] = imports_of(ast.parse(handle.read()), name, is_package, modules)
    return result


def package_of(module, packages):
    """The subpackage `module` belongs to (itself when it is one), or the module itself when it lies
    directly in the root package: the root's modules stay nodes of their own, since every subpackage
    imports some of them (errors, fileio) and is imported by others (reproduce)."""
    for package in packages:
        if module == package or module.startswith(package + "."):
            return package
    return module


def package_graph(graph):
    """The import graph with each subpackage (a folder with __init__.py below the root) collapsed into
    one node: a cycle in it (perf -> backends -> perf) is a cycle between packages, which the module
    graph does not show when no single module closes it."""
    root = min(graph, key=len)
    packages = sorted((name for name in graph if name != root and name + ".__init__" not in graph
                       and any(other.startswith(name + ".") for other in graph)), key=len, reverse=True)
    collapsed = {}
    for module, targets in graph.items():
        node = package_of(module, packages)
        collapsed.setdefault(node, set()).update(
            package_of(target, packages) for target in targets if package_of(target, packages) != node)
    return collapsed


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(here), "fsaf_repro")
    print(json.dumps(figures(target), indent=1))
