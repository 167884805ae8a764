"""The package's shape: no import cycles between its modules (function-level imports included,
so a cycle cannot be hidden by moving an import into a function), and no plugin state parked on
RecBole's objects by name."""
import ast
from pathlib import Path

from helpers import ROOT

PKG = ROOT / "recbole_dsl"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set) -> set:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from pkg import submodule` depends on the submodule; `from mod import name` on mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    return out


def test_no_import_cycles():
    files = sorted(PKG.rglob("*.py"))
    modules = {module_name(p) for p in files}
    graph = {module_name(p): imports_of(p, modules) for p in files}

    def ancestors(m):
        return {".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)}

    # importing a submodule runs its packages' __init__ first (those of other packages than the
    # importer's own: the importer's own package is already being imported)
    for m in list(graph):
        graph[m] |= {a for t in graph[m] for a in ancestors(t) if a in modules} - ancestors(m) - {m}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_no_plugin_attributes_set_on_recbole_models_by_name():
    # the adapters own their state; the recommender holds rec_settings / rec_adapter / rec_loss_fn /
    # neg_sampler only
    for path in (PKG / "adapters").glob("*.py"):
        assert "_rl_" not in path.read_text(), path
