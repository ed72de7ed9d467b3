"""The package's modules import each other without a cycle, counting imports inside functions too."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "biounet"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source (``biounet`` itself left out)."""
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                name = ".".join(p for p in (base, node.module or "") if p)
                deps.update(next((c for c in (f"{name}.{a.name}", name) if c in files), None) for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in files)
        graph[mod] = deps - {None, mod, "biounet"}
    return graph


def test_no_import_cycles():
    graph = import_graph()
    assert {"biounet.train", "biounet.tune", "biounet.export", "biounet.zoo"} <= set(graph)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(graph[mod]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(path[path.index(dep):] + [dep])
            if dep not in state:
                visit(dep, path + [dep])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])


def test_the_training_loop_leaves_tuning_to_biounet_tune():
    graph = import_graph()
    assert "biounet.tune" in graph["biounet.train"] and "biounet.train" not in graph["biounet.tune"]
