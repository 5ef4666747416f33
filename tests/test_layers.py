"""The package's layers run one way, and no function outgrows a screen or two.

Layers, bottom up: the top-level helpers (config.py, runs.py, device.py, ...) < data < model < train
< infer and interop (side by side) < eval and any other folder < the entry points (cli.py, quickstart.py,
__init__.py). A module may import from its own layer or below, never above.
"""
from __future__ import annotations

import ast
from pathlib import Path

import minimind_v

PACKAGE = Path(minimind_v.__file__).parent
FOLDER_LAYER = {"data": 1, "model": 2, "train": 3, "infer": 4, "interop": 4, "eval": 5}
OTHER_FOLDER_LAYER = 5
ENTRY_POINTS = {"cli", "quickstart", "__init__", "__main__"}
ENTRY_LAYER = 6
MAX_FUNCTION_LINES = 80


def layer_of(parts: tuple[str, ...]) -> int:
    """The layer of a module given as its dotted parts below `minimind_v` (("train", "trainer"), ("runs",))."""
    if not parts:
        return ENTRY_LAYER  # the package itself: `minimind_v/__init__.py`
    if len(parts) == 1:
        return ENTRY_LAYER if parts[0] in ENTRY_POINTS else 0
    return FOLDER_LAYER.get(parts[0], OTHER_FOLDER_LAYER)


def module_parts(path: Path) -> tuple[str, ...]:
    """("train", "trainer") for train/trainer.py, ("data",) for data/__init__.py, ("__init__",) for the top."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts


def imported_modules(node: ast.AST, here: tuple[str, ...], is_package: bool) -> list[tuple[str, ...]]:
    """The package modules an import statement in module `here` reaches, as parts below `minimind_v`."""
    if isinstance(node, ast.Import):
        return [tuple(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "minimind_v"]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level == 0:
        if (node.module or "").split(".")[0] != "minimind_v":
            return []
        base = tuple(node.module.split(".")[1:])
    else:
        package = (here if is_package else here[:-1]) if here != ("__init__",) else ()
        base = package[:len(package) - (node.level - 1)] + tuple((node.module or "").split(".") if node.module else ())
    if node.module is None or (node.level == 0 and not base):  # `from . import x`, `from minimind_v import x`
        return [base + (a.name,) for a in node.names]
    return [base]


def resolved_layer(parts: tuple[str, ...]) -> int:
    """A folder imported as a whole (`from minimind_v import data`) sits in that folder's layer."""
    if len(parts) == 1 and (PACKAGE / parts[0]).is_dir():
        return FOLDER_LAYER.get(parts[0], OTHER_FOLDER_LAYER)
    return layer_of(parts)


def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_imports_from_a_layer_above_its_own():
    up = []
    for path in package_modules():
        here = module_parts(path)
        mine = resolved_layer(here)
        for node in ast.walk(ast.parse(path.read_text())):
            for target in imported_modules(node, here, path.name == "__init__.py"):
                if target and resolved_layer(target) > mine:
                    up.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports minimind_v.{'.'.join(target)}")
    assert not up, "imports that run up the layers:\n" + "\n".join(up)


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in package_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} is {n} lines")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_the_check_sees_an_import_up_and_a_relative_one():
    """The checker itself: a data module importing train is caught, relative and absolute, and own layer passes."""
    here = ("data", "check")
    rel = ast.parse("from ..train.trainer import train").body[0]
    absolute = ast.parse("import minimind_v.eval.score").body[0]
    sibling = ast.parse("from .chat import encode_conversation").body[0]
    helper = ast.parse("from ..runs import read_config").body[0]
    assert imported_modules(rel, here, False) == [("train", "trainer")]
    assert resolved_layer(("train", "trainer")) > layer_of(here)
    assert imported_modules(absolute, here, False) == [("eval", "score")]
    assert imported_modules(sibling, here, False) == [("data", "chat")]
    assert resolved_layer(imported_modules(helper, here, False)[0]) == 0 < layer_of(here)
    assert layer_of(("quickstart",)) == ENTRY_LAYER and layer_of(("device",)) == 0
