"""Runs the tutorial notebook before the site is built and turns it into a page, so the site shows today's
outputs and a notebook that no longer runs fails the build. An mkdocs hook.

docs/tutorial.ipynb is the source (kept without outputs). The executed copy and its Markdown rendering (with the
figures it drew as PNG files) go to docs/notebook/. The rendering is done here with nbconvert rather than by an
mkdocs notebook plugin, because such plugins do not work beside the language plugin.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import MarkdownExporter

_executed: set[Path] = set()
HEADER = "*This page is [the tutorial notebook](tutorial.ipynb), run when the site was built.*\n\n"


def execute(source: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell of `source` in a fresh kernel (cwd: the notebook's folder); returns it with outputs."""
    nb = nbformat.read(source, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(source.parent)}}).execute()
    return nb


def render(nb: nbformat.NotebookNode, out: Path) -> None:
    """The executed notebook -> out/tutorial.ipynb, out/tutorial.md and the PNG outputs beside them."""
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / "tutorial.ipynb")
    shown = nbformat.from_dict(nb)  # the page leaves out stderr (progress bars, library warnings)
    for cell in shown.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]
    body, resources = MarkdownExporter().from_notebook_node(shown)
    for name, data in resources.get("outputs", {}).items():
        (out / name).write_bytes(data)
    title, _, rest = body.lstrip().partition("\n")  # keep the notebook's own title first
    (out / "tutorial.md").write_text(f"{title}\n\n{HEADER}{rest}")


def on_pre_build(config, **_kw) -> None:
    docs = Path(config.docs_dir)
    out = docs / "notebook"
    if out in _executed:  # a multi-language build calls this once per language
        return
    render(execute(docs / "tutorial.ipynb"), out)
    _executed.add(out)
