"""Runs the tutorial notebook before the site is built, so the site shows today's outputs and a notebook that
no longer runs fails the build. An mkdocs hook.

docs/tutorial.ipynb is the source (kept without outputs); the executed copy goes to docs/notebook/, which the
site renders.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

_executed: set[Path] = set()


def execute(source: Path, target: Path, timeout: int = 600) -> None:
    """Run every cell of `source` in a fresh kernel (cwd: the notebook's folder) and save it with outputs."""
    nb = nbformat.read(source, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(source.parent)}}).execute()
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)


def on_pre_build(config, **_kw) -> None:
    docs = Path(config.docs_dir)
    target = docs / "notebook" / "tutorial.ipynb"
    if target in _executed:  # a multi-language build calls this once per language
        return
    execute(docs / "tutorial.ipynb", target)
    _executed.add(target)
