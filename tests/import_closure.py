"""The project modules a DVC stage's code imports, transitively (imports inside functions included).

`dvc.yaml` must list exactly these files in each stage's `deps`, so that editing a module reruns exactly the
stages that import it (tests/unit/stages/test_stage_deps.py checks it). Print the expected lists with

    python -m tests.import_closure
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline",)


def module_file(name: str) -> Path | None:
    """The file of project module `name` (a .py module or a package's __init__.py), None if not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    parts = name.split(".")
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def _package_inits(name: str) -> list[Path]:
    """__init__.py of every package on the way to module `name` (Python runs each one on import)."""
    parts = name.split(".")
    found = [module_file(".".join(parts[:i])) for i in range(1, len(parts))]
    return [f for f in found if f is not None and f.name == "__init__.py"]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_names(path: Path) -> set[str]:
    """Dotted names imported anywhere in `path` (module level or inside functions); `from a import b` gives a, a.b."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def closure(entry: Path) -> set[Path]:
    """Every project file that importing/running `entry` executes: its imports, theirs, and package __init__s."""
    seen: set[Path] = set()
    todo = [entry, *_package_inits(_module_name(entry))]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path):
            target = module_file(name)
            if target is not None:
                todo.extend([target, *_package_inits(name)])
    return seen


def is_docstring_only(path: Path) -> bool:
    """True for a module whose body is at most a docstring (an __init__ that cannot change behaviour)."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def code_deps(stage: str) -> list[str]:
    """The files the `stage` entry module runs, relative to the root, without docstring-only __init__ files."""
    files = closure(ROOT / "pipeline" / "stages" / f"{stage}.py")
    return sorted(str(f.relative_to(ROOT)) for f in files if not (f.name == "__init__.py" and is_docstring_only(f)))


if __name__ == "__main__":
    import yaml

    for name in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]:
        print(f"{name}:")
        for dep in code_deps(name):
            print(f"      - {dep}")
