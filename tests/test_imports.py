"""The project's imports, read from its sources with ``ast`` (nothing is imported): the plugin
``fairseq_mixtape`` (the core that ``--user-dir`` loads) never imports the tools
(``fairseq_mixtape_tools``) nor a script of ``scripts/`` or ``examples/``, directly or through
another module; no file loads a script from its path (``importlib``'s file loaders, ``runpy``,
a folder of scripts put on ``sys.path`` to import one by name): code that scripts share lives in
a package; and the tools' modules import each other without a cycle.

For the core, every import counts, also one inside a function (run later, it would still fail
where the tools are not installed). For cycles, the imports a module runs when it is loaded
(not those inside its functions) make a cycle, which leaves a module half loaded when the
other imports it; imports inside functions may not close a cycle either.
Each check is also run on a small tree with the fault it looks for, to show that it finds it.
"""

import ast
import pathlib
from typing import Dict, Iterator, List, Optional, Set

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("fairseq_mixtape", "fairseq_mixtape_tools")
SCRIPT_FOLDERS = ("scripts", "examples")
# Calls that load a module from a file (or run one as __main__), by the name they are called by.
FILE_LOADERS = {"spec_from_file_location", "SourceFileLoader", "SourcelessFileLoader",
                "load_source", "run_path", "run_module", "load_script"}
# The one file allowed to load a script from its path, and why: the plain-PyTorch example is
# one file to copy, installed by the core distribution without the tools, so its code cannot
# move into a package; its test loads it to check its functions.
ALLOWED_LOADS = {"tests/test_pytorch_example.py": "examples/pytorch/train_lm.py"}



def python_files(root: pathlib.Path) -> List[pathlib.Path]:
    """Every .py file of the tree, but for hidden folders and run folders."""
    return sorted(path for path in root.rglob("*.py")
                  if not any(part.startswith(".") or part == "runs"
                             for part in path.relative_to(root).parts[:-1]))


def package_modules(root: pathlib.Path) -> Dict[str, pathlib.Path]:
    """Dotted module name -> file, for every module of the packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def script_names(root: pathlib.Path) -> Set[str]:
    """The names the scripts would be imported by, were their folder on sys.path."""
    return {path.stem for folder in SCRIPT_FOLDERS for path in python_files(root / folder)}


def statements(tree: ast.AST, in_functions: bool) -> Iterator[ast.AST]:
    """Every node of the tree; without ``in_functions``, not those in a function's body (run
    when it is called, not when the module is loaded)."""
    if in_functions:
        yield from ast.walk(tree)
        return
    nodes = [tree]
    while nodes:
        node = nodes.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            nodes.extend(ast.iter_child_nodes(node))


def imported_names(tree: ast.AST, module: str, is_package: bool,
                   in_functions: bool = True) -> List[str]:
    """Every module name the code imports, relative imports made absolute; ``from X import Y``
    gives X.Y as well as X (Y may be a module)."""
    names = []
    for node in statements(tree, in_functions):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph(root: pathlib.Path, in_functions: bool = True) -> Dict[str, Set[str]]:
    """Module -> the project's modules it imports (``in_functions``: also inside its functions):
    the packages' modules by name, and ``script:NAME`` for an import of a script's name."""
    modules, scripts = package_modules(root), script_names(root)
    graph = {}
    for module, path in modules.items():
        edges = set()
        for name in imported_names(ast.parse(path.read_text()), module,
                                   path.name == "__init__.py", in_functions):
            parts = name.split(".")
            known = next((".".join(parts[:n]) for n in range(len(parts), 0, -1)
                          if ".".join(parts[:n]) in modules), None)
            # a module's own packages are loaded before it: importing them closes no cycle
            if known is not None and known != module and not module.startswith(known + "."):
                edges.add(known)
            elif len(parts) == 1 and name in scripts:
                edges.add(f"script:{name}")
        graph[module] = edges
    return graph


def core_reaches(graph: Dict[str, Set[str]]) -> Dict[str, List[str]]:
    """For each module outside the core that the core's modules import, directly or not, one
    chain of imports from a core module to it."""
    found = {}
    for start in (m for m in graph if m.split(".")[0] == "fairseq_mixtape"):
        chain_to = {start: [start]}
        stack = [start]
        while stack:
            module = stack.pop()
            for target in sorted(graph.get(module, ())):
                if target in chain_to:
                    continue
                chain_to[target] = chain_to[module] + [target]
                if target.split(".")[0] == "fairseq_mixtape":
                    stack.append(target)
                else:
                    found.setdefault(target, chain_to[target])
    return found


def find_cycle(graph: Dict[str, Set[str]], prefix: str) -> Optional[List[str]]:
    """A cycle of imports among the modules named ``prefix``..., as a list of modules that ends
    where it starts; None where there is none."""
    nodes = sorted(m for m in graph if m == prefix or m.startswith(prefix + "."))
    state, path = {}, []

    def visit(module):
        state[module], path[len(path):] = "open", [module]
        for target in sorted(graph[module] & set(nodes)):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[module] = "done"
        path.pop()
        return None

    for node in nodes:
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def loads_by_path(root: pathlib.Path) -> List[str]:
    """Each place a file loads a script from its path: a file loader called, runpy imported,
    a scripts/ or examples/ folder put on sys.path, or a script imported by its bare name."""
    scripts = script_names(root)
    found = []
    for path in python_files(root):
        name = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call):
                called = getattr(node.func, "attr", getattr(node.func, "id", None))
                if called in FILE_LOADERS:
                    found.append(f"{where}: {called}(...)")
                if (isinstance(node.func, ast.Attribute) and node.func.attr in ("insert", "append")
                        and ast.unparse(node.func.value) == "sys.path"):
                    argument = ", ".join(map(ast.unparse, node.args))
                    if any(word in argument.lower() for word in ("script", "example")):
                        found.append(f"{where}: sys.path.{node.func.attr}({argument})")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                           else [node.module or ""] if not node.level else [])
                for module in modules:
                    if module.split(".")[0] == "runpy":
                        found.append(f"{where}: import runpy")
                    elif module in scripts:
                        found.append(f"{where}: import {module} (a script)")
    return found


def allowed(load: str) -> bool:
    return any(load.startswith(f"{name}:") and "spec_from_file_location" in load
               for name in ALLOWED_LOADS)


# --------------------------------------------------------------------------------- the checks

def test_the_core_imports_no_tools_and_no_scripts():
    graph = import_graph(REPO)
    assert "fairseq_mixtape.output_layers.base" in graph["fairseq_mixtape.output_layers"]
    assert "fairseq_mixtape_tools.runner" in graph["fairseq_mixtape_tools.experiments.common"]
    assert core_reaches(graph) == {}


def test_no_file_loads_a_script_from_its_path():
    loads = loads_by_path(REPO)
    assert [load for load in loads if not allowed(load)] == []
    for name, script in ALLOWED_LOADS.items():  # the exception is still needed, and only there
        assert any(load.startswith(f"{name}:") for load in loads), name
        assert (REPO / script).is_file() and script in (REPO / name).read_text().replace(
            '" / "', "/")


def test_the_tools_import_each_other_without_a_cycle():
    loaded = import_graph(REPO, in_functions=False)
    assert "fairseq_mixtape_tools.experiments.sweep" in loaded
    assert find_cycle(loaded, "fairseq_mixtape_tools") is None
    graph = import_graph(REPO)
    assert "fairseq_mixtape_tools.benchmark.grid" in graph["fairseq_mixtape_tools.benchmark.command"]
    assert find_cycle(graph, "fairseq_mixtape_tools") is None  # not even through functions


# ------------------------------------------------------------- the checks on faulty trees

def write(root: pathlib.Path, files: Dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


CLEAN = {
    "fairseq_mixtape/__init__.py": "from . import layers\n",
    "fairseq_mixtape/layers.py": "import torch\n",
    "fairseq_mixtape_tools/__init__.py": "",
    "fairseq_mixtape_tools/runner.py": "import fairseq_mixtape\n",
    "fairseq_mixtape_tools/experiments/__init__.py": "",
    "fairseq_mixtape_tools/experiments/common.py": "from ..runner import run_tool\n",
    "fairseq_mixtape_tools/experiments/sweep.py": "from .common import Run\n",
    "scripts/soak.py": "import sys\nfrom fairseq_mixtape_tools.runner import main\n",
}


def test_the_checks_pass_a_clean_tree(tmp_path):
    graph = import_graph(write(tmp_path, CLEAN))
    assert graph["fairseq_mixtape_tools.experiments.sweep"] == {
        "fairseq_mixtape_tools.experiments.common"}
    assert core_reaches(graph) == {} and find_cycle(graph, "fairseq_mixtape_tools") is None
    assert loads_by_path(tmp_path) == []


@pytest.mark.parametrize("faulty,expected", [
    ({"fairseq_mixtape/layers.py": "def f():\n    from fairseq_mixtape_tools import runner\n"},
     {"fairseq_mixtape_tools": ["fairseq_mixtape.layers", "fairseq_mixtape_tools"],
      "fairseq_mixtape_tools.runner": ["fairseq_mixtape.layers",
                                       "fairseq_mixtape_tools.runner"]}),
    ({"fairseq_mixtape/layers.py": "import soak\n"},
     {"script:soak": ["fairseq_mixtape.layers", "script:soak"]}),
])
def test_an_import_of_the_tools_or_a_script_by_the_core_is_found(tmp_path, faulty, expected):
    graph = import_graph(write(tmp_path, {**CLEAN, **faulty}))
    reached = core_reaches(graph)
    assert set(reached) == set(expected)
    for target, chain in expected.items():
        assert reached[target][-len(chain):] == chain


@pytest.mark.parametrize("code,expected", [
    ("import importlib.util\nspec = importlib.util.spec_from_file_location('s', 'scripts/s.py')\n",
     "spec_from_file_location(...)"),
    ("import runpy\n", "import runpy"),
    ("import sys\nsys.path.insert(0, 'scripts')\n", "sys.path.insert(0, 'scripts')"),
    ("import soak\n", "import soak (a script)"),
    ("from fairseq_mixtape_tools.experiments import load_script\nload_script('x.py')\n",
     "load_script(...)"),
])
def test_a_script_loaded_from_its_path_is_found(tmp_path, code, expected):
    write(tmp_path, {**CLEAN, "tests/test_something.py": code})
    assert any(load.startswith("tests/test_something.py:") and expected in load
               for load in loads_by_path(tmp_path)), loads_by_path(tmp_path)


def test_an_import_cycle_of_the_tools_is_found(tmp_path):
    write(tmp_path, {**CLEAN, "fairseq_mixtape_tools/runner.py": (
        "import fairseq_mixtape\nfrom .experiments import sweep\n")})
    cycle = ["fairseq_mixtape_tools.experiments.common", "fairseq_mixtape_tools.runner",
             "fairseq_mixtape_tools.experiments.sweep", "fairseq_mixtape_tools.experiments.common"]
    assert find_cycle(import_graph(tmp_path, in_functions=False), "fairseq_mixtape_tools") == cycle
    write(tmp_path, {"fairseq_mixtape_tools/runner.py": (  # the same, inside a function
        "def later():\n    from .experiments import sweep\n")})
    assert find_cycle(import_graph(tmp_path, in_functions=False), "fairseq_mixtape_tools") is None
    assert find_cycle(import_graph(tmp_path), "fairseq_mixtape_tools") == cycle
