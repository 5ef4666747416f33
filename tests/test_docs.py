"""The documentation site: built with --strict (a broken link or a missing page fails), its CLI reference
generated from the parsers, its figures drawn by the code, its tutorial notebook executed."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _all_parsers(parser: argparse.ArgumentParser, path: str = "minimind-v"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{path} {name}")


def test_cli_reference_has_every_command_and_every_option():
    from minimind_v.cli import build_parser

    page = _hook("cli_reference").cli_markdown()
    n_options = 0
    for path, parser in _all_parsers(build_parser()):
        assert f"`{path}`" in page, f"{path} missing from the CLI reference"
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help") and action.help != argparse.SUPPRESS:
                    assert f"`{flag}`" in page, f"{path} {flag} missing from the CLI reference"
                    n_options += 1
    assert n_options > 100  # the walk really went through the subcommands


@pytest.mark.slow
def test_site_builds_strict_with_generated_pages_figures_and_the_executed_notebook(tmp_path):
    from minimind_v.quickstart import QUICKSTART_PRESETS, run_quickstart

    run = tmp_path / "smoke-run"
    run_quickstart(run, dataclasses.replace(QUICKSTART_PRESETS["smoke"]), device="cpu", evaluate=False,
                   say=lambda *_: None)
    site = tmp_path / "site"
    env = {**os.environ, "MINIMIND_V_DOCS_RUN": str(run), "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(site)], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    concepts = (site / "concepts" / "index.html").read_text()
    assert "196 × 768" in concepts and "64 × 768" in concepts and "9 × 192" in concepts  # measured shapes
    for fig in ("pipeline.png", "attention.png", "loss.png"):
        assert (site / "figures" / fig).stat().st_size > 5000, fig
    assert "--lora-rank" in (site / "reference" / "cli" / "index.html").read_text()
    assert "answer_attention" in (site / "reference" / "api" / "index.html").read_text()
    notebook = (site / "notebook" / "tutorial" / "index.html").read_text()
    assert "pixels (1, 3, 48, 48)" in notebook  # an output the executed notebook printed
    assert '"cell_type"' not in notebook and "<h2" in notebook  # rendered as a page, not shown as JSON
    assert len(list((site / "notebook").glob("output_*.png"))) >= 4  # the figures it drew
    assert "两条命令" in (site / "zh" / "index.html").read_text()
    assert "快速开始" in (site / "zh" / "quickstart" / "index.html").read_text()
