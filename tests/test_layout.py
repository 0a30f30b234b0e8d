"""The project's layout (docs/README.md, "Where things live"), read from the code with `ast`: components in actprm/
never import a job, no import circle, imports inside functions only for optional heavy dependencies or Ray,
one job module per CLI verb."""

import ast
import importlib.metadata
import pathlib

from actprm.cli import VERBS, config_model, job_module

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("actprm", "pipelines")
# what a function may import, and why: optional extras (vllm, trl, moto), Ray, matplotlib (the Agg backend
# is chosen before pyplot loads), datasketch (scipy-heavy; only --near-dedup needs it)
LAZY_OK = ("vllm", "trl", "moto", "ray", "matplotlib", "datasketch")
# and per module: provenance is imported by filter's torch-free read tasks (through io.writers); it needs torch
# only to resolve a config's `dtype` on the driver
LAZY_OK_IN = {"actprm/provenance.py": ("torch", "actprm.precision")}


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: pathlib.Path, known: set[str]) -> list[tuple[str, ast.stmt, bool]]:
    """(imported project module or external name, the statement, whether it sits inside a function)."""
    tree = ast.parse(path.read_text())
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    # `if TYPE_CHECKING:` imports never run (actprm/__init__.py names its lazy exports for type checkers)
    typing_only = {id(n) for b in ast.walk(tree) if isinstance(b, ast.If) and isinstance(b.test, ast.Name)
                   and b.test.id == "TYPE_CHECKING" for n in ast.walk(b)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        out += [(name, node, id(node) in inside) for name in names]
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m, _, _ in imports(path, set(mods)) if m in mods and m != name}
            for name, path in mods.items()}


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert circles == []


def test_components_never_import_a_job():
    offenders = [(m, dep) for m, deps in graph().items() if m.startswith("actprm") and m != "actprm.cli"
                 for dep in deps if dep.startswith("pipelines")]
    assert offenders == []


def test_imports_inside_functions_are_optional_or_ray():
    mods = modules()
    lazy = [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for path in mods.values()
            for name, node, inside in imports(path, set(mods))
            if inside and name.split(".")[0] not in LAZY_OK
            and name not in LAZY_OK_IN.get(str(path.relative_to(ROOT)), ())]
    assert lazy == []


def test_every_verb_is_one_job_module_with_run():
    for verb in VERBS:
        assert config_model(verb).__doc__, verb
        path = ROOT / (job_module(verb).replace(".", "/") + ".py")
        assert path.is_file(), verb
        tree = ast.parse(path.read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body), verb


def test_pipelines_package_is_ours_alone():
    """`pipelines` is a top-level package: no other installed distribution may provide it."""
    assert set(importlib.metadata.packages_distributions().get("pipelines", [])) == {"actprm"}
