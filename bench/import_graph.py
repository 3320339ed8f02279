"""The import picture of udabench: which udabench modules each module imports, and the checks of
issue 15 on it.

    python bench/import_graph.py [REPO]          # REPO: a checkout (default: this one)

Reads the source with ``ast`` (nothing is imported). Modules: ``udabench/**`` as ``udabench.*``,
``methods/*.py`` as ``udabench.methods.*`` (how they ship), and the example plug-in's package when
present. ``from P import n`` is an edge to ``P.n`` when that is a module, else to ``P``. Imports
at module level run at import time; imports inside functions or under ``if TYPE_CHECKING`` are
"lazy" and shown in brackets. ``import_module("name")`` calls with a literal name count as imports.

Checks (each printed with its offenders; exit status 1 when one fails):
- no import-time cycle among the modules;
- nothing in ``udabench.methods``, ``udabench.methodkit``, ``udabench.method`` or the plug-in's
  method imports ``udabench.engine``, directly or through what it imports at import time;
- no method module imports another method module;
- the registry imports none of the modules that register into it.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

REPO = Path(__file__).resolve().parents[1]
PLUGIN = Path("examples/udabench-example-plugin/src/udabench_example")
KIT = ("udabench.methods", "udabench.methodkit", "udabench.method")


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    eager: set[str] = field(default_factory=set)
    lazy: set[str] = field(default_factory=set)


def discover(repo: Path) -> dict[str, Module]:
    roots = [(repo / "udabench", "udabench"), (repo / "methods", "udabench.methods"),
             (repo / PLUGIN, "udabench_example")]
    modules: dict[str, Module] = {}
    for folder, package in roots:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join([package, *parts])
            modules[name] = Module(name, path, is_package)
    return modules


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_module_call(node: ast.AST) -> str | None:
    """The module an ``import_module("name")`` / ``importlib.import_module("name")`` call names."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
        return None
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return node.args[0].value if name == "import_module" else None


def _imports(tree: ast.AST) -> list[tuple[ast.AST, bool]]:
    """(import node, runs at import time) for every import statement and every
    ``import_module("literal")`` call (made an ``ast.Import``)."""
    found: list[tuple[ast.AST, bool]] = []

    def walk(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            named = _import_module_call(child)
            if named is not None:
                found.append((ast.Import(names=[ast.alias(name=named)]), eager))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, eager))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(child, False)
            elif isinstance(child, ast.If) and _type_checking(child):
                walk(child, False)
            else:
                walk(child, eager)

    walk(tree, True)
    return found


def resolve(module: Module, node: ast.AST, known: dict[str, Module]) -> set[str]:
    """The known modules an import statement names."""
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
        return {longest_known(t, known) for t in targets} - {None}
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.name.split(".")
        base = base if module.is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    out = set()
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        out.add(sub if sub in known else longest_known(source, known))
    return out - {None}


def longest_known(name: str, known: dict[str, Module]) -> str | None:
    parts = name.split(".")
    while parts:
        if ".".join(parts) in known:
            return ".".join(parts)
        parts.pop()
    return None


def build(repo: Path) -> dict[str, Module]:
    modules = discover(repo)
    for module in modules.values():
        tree = ast.parse(module.path.read_text(), str(module.path))
        for node, eager in _imports(tree):
            for target in resolve(module, node, modules):
                if target != module.name:
                    (module.eager if eager else module.lazy).add(target)
        module.lazy -= module.eager
    return modules


def in_kit(name: str) -> bool:
    return any(name == k or name.startswith(k + ".") for k in KIT) or name == "udabench_example.flip_consistency"


def report(repo: Path) -> int:
    modules = build(repo)
    eager = nx.DiGraph((m.name, t) for m in modules.values() for t in m.eager)
    eager.add_nodes_from(modules)
    every = nx.DiGraph(eager.edges)
    every.add_edges_from((m.name, t) for m in modules.values() for t in m.lazy)

    print(f"import graph of {repo}")
    for name in sorted(modules):
        m = modules[name]
        lazy = f"  [lazy: {', '.join(sorted(m.lazy))}]" if m.lazy else ""
        print(f"  {name} -> {', '.join(sorted(m.eager)) or '-'}{lazy}")

    failures = 0

    def check(title: str, offenders: list[str]) -> None:
        nonlocal failures
        failures += bool(offenders)
        print(f"{'FAIL' if offenders else 'ok  '} {title}: {len(offenders)}")
        for line in offenders:
            print(f"       {line}")

    n_eager, n_lazy = eager.number_of_edges(), sum(len(m.lazy) for m in modules.values())
    print(f"\nmodules {len(modules)}, import-time edges {n_eager}, lazy edges {n_lazy}")
    cycles = [sorted(c) for c in nx.strongly_connected_components(eager) if len(c) > 1]
    check("import-time cycles", [" <-> ".join(c) for c in cycles])
    lazy_cycles = [sorted(c) for c in nx.strongly_connected_components(every) if len(c) > 1]
    print(f"     (cycles counting lazy imports too, legal at run time: {len(lazy_cycles)})")
    for c in lazy_cycles:
        print(f"       {' <-> '.join(c)}")
    kit = sorted(n for n in modules if in_kit(n))
    direct = [f"{n} -> {t}" for n in kit for t in sorted(modules[n].eager | modules[n].lazy)
              if t.startswith("udabench.engine")]
    check("method/kit modules importing udabench.engine", direct)
    reach = [f"{n} ->* {t}" for n in kit for t in sorted(nx.descendants(eager, n))
             if t.startswith("udabench.engine")]
    check("method/kit modules reaching udabench.engine at import time", reach)
    method_files = [n for n in kit if n.startswith("udabench.methods.") or n.startswith("udabench_example")]
    sibling = [f"{n} -> {t}" for n in method_files for t in sorted(modules[n].eager | modules[n].lazy)
               if t.startswith("udabench.methods.") or t == "udabench.methods"]
    check("method modules importing another method", sibling)
    registry = modules.get("udabench.registry")
    users = sorted((registry.eager | registry.lazy) - {"udabench.errors"}) if registry else []
    check("modules the registry imports besides udabench.errors", users)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(report(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else REPO))
