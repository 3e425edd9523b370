"""Imports go one way, ``api -> eventhub_log``, with no exception (ARCHITECTURE.md).

The library must work with no web server: no module under eventhub_log/ may
import ``api``, nor name it in a string that something imports by name (a
uvicorn app or protocol string, ``importlib.import_module``, an entry point).
What needs the app (``serve``) lives in api/cli.py."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "eventhub_log"
# "api.app:create_app", "api:app", "api.http_protocol": a module path rooted at api.
NAMES_API = re.compile(r"(?<![\w./-])api[.:][A-Za-z_]")
FIX = "move the code that needs the API to api/ (see api/cli.py) or name it otherwise"


def library_modules() -> list[Path]:
    modules = sorted(LIBRARY.rglob("*.py"))
    assert len(modules) > 10, "eventhub_log/ not found"
    return modules


def imported_api(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] == "api"]
    return found


def strings_naming_api(tree: ast.AST) -> list[tuple[int, str]]:
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and NAMES_API.search(node.value)
    ]


def test_the_library_never_imports_the_api() -> None:
    problems = []
    for path in library_modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(ROOT)
        problems += [f"{where}:{line} imports {name}" for line, name in imported_api(tree)]
        problems += [f"{where}:{line} names {text!r}" for line, text in strings_naming_api(tree)]
    assert not problems, "; ".join(problems) + f": {FIX}"


def test_the_scan_finds_what_it_looks_for() -> None:
    tree = ast.parse(
        "import api\nfrom api.app import create_app\nimport api.sse as s\n"
        "from . import api_like\nimport apis\n"
        "run('api.app:create_app')\nimport_module('api.http_protocol')\n"
        "x = 'see api/cli.py'\ny = 'the rapi.x'\n"
    )
    assert [name for _, name in imported_api(tree)] == ["api", "api.app", "api.sse"]
    assert [text for _, text in strings_naming_api(tree)] == [
        "api.app:create_app",
        "api.http_protocol",
    ]


def test_importing_the_library_loads_no_api_module() -> None:
    # Every library module, including the CLI, in a fresh interpreter.
    names = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in library_modules()
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'api' or m.startswith('api.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", f"importing eventhub_log loaded {out.strip()}: {FIX}"
