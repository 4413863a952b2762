"""The package's structure (docs/architecture.md): no import cycle among cmat's own modules,
function-local imports included; no private name imported from another module; no module over
400 lines; the layer contracts of setup.cfg hold (lint-imports); setup.cfg lists every package.

Only imports under ``if TYPE_CHECKING:`` are exempt: an import moved into a function to dodge a
cycle is still the cycle.
"""
from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> installed package (setup.cfg package_dir)
SOURCES = {"cmat": "cmat", "tasks": "cmat.tasks", "baselines": "cmat.baselines"}
MAX_LINES = 400


def module_files() -> dict:
    """Installed module name -> source file, for every module of cmat, tasks/ and baselines/."""
    out = {}
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package] + parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def imports_of(name: str, path: Path, modules: dict) -> list:
    """``(target module, imported name or None, line)`` for every import of a cmat module in the
    file, at any depth (inside functions too), relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((sub, None, node.lineno) if sub in modules else (mod, a.name, node.lineno))
    for folder, package_name in SOURCES.items():  # a source-folder name used as a package is a bug
        assert not any(t == folder or t.startswith(folder + ".") for t, _, _ in out if folder != "cmat"), \
            f"{path}: imports the source folder {folder!r}; import {package_name} instead"
    return [(t, n, line) for t, n, line in out if t == "cmat" or t.startswith("cmat.")]


def import_graph() -> tuple:
    modules = module_files()
    graph = {m: {} for m in modules}
    for name, path in modules.items():
        for target, _, line in imports_of(name, path, modules):
            if target in modules and target != name:
                graph[name].setdefault(target, line)
    return modules, graph


def find_cycle(graph: dict):
    """One import cycle as a list of modules, or None (iterative depth-first search)."""
    state, parent = {}, {}
    for start in graph:
        if start in state:
            continue
        stack = [(start, iter(graph[start]))]
        state[start] = "open"
        while stack:
            node, children = stack[-1]
            for child in children:
                if state.get(child) == "open":
                    cycle, cur = [child], node
                    while cur != child:
                        cycle.append(cur)
                        cur = parent[cur]
                    return cycle[::-1]
                if child not in state:
                    state[child], parent[child] = "open", node
                    stack.append((child, iter(graph[child])))
                    break
            else:
                state[node] = "done"
                stack.pop()
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {}}) is not None
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1, "b": 1}}) is None


def test_no_import_cycle_not_even_inside_functions():
    _, graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle + cycle[:1])


def test_no_private_name_imported_from_another_module():
    modules = module_files()
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name} from {target}"
           for mod, path in modules.items() for target, name, line in imports_of(mod, path, modules)
           if name and name.startswith("_") and not name.startswith("__") and target != mod]
    assert not bad, "\n".join(bad)


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in module_files().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by responsibility: {long}"


def test_setup_cfg_lists_every_package():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}
    packages = {m for m, p in module_files().items() if p.name == "__init__.py"}
    assert listed == packages | {"cmat.presets"}  # presets: YAML files only (package_data)
    mapped = dict(line.split("=") for line in cfg["options"]["package_dir"].strip().splitlines())
    assert {k.strip(): v.strip() for k, v in mapped.items()} == {"cmat.tasks": "tasks", "cmat.baselines": "baselines"}


def test_layer_contracts_hold():
    """lint-imports with setup.cfg's contracts, on the sources arranged as installed."""
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "lint_layers.py")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


@pytest.mark.parametrize("module", ["tasks", "baselines"])
def test_source_folders_are_not_top_level_packages_when_installed(module, tmp_path):
    """Outside the repository, ``import tasks`` finds nothing from cmat; cmat.tasks works."""
    source = str(ROOT / module)
    code = (f"import importlib.util, pathlib, cmat.{module}\n"
            f"assert pathlib.Path(cmat.{module}.__file__).parent == pathlib.Path({source!r})\n"
            f"spec = importlib.util.find_spec({module!r})\n"
            f"assert spec is None or not str(spec.origin).startswith({source!r}), spec.origin\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
