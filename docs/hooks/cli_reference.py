"""The CLI reference page, written from the argparse parsers themselves so that it cannot drift from the code.

An mkdocs hook (it writes docs/reference/cli.md before every build), and importable: `cli_markdown()`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from minimind_v.cli import build_parser

HEADER = """# Command-line reference

Generated from the argument parsers of `minimind-v` when this site was built: every command, every option,
its default and its help, exactly as `minimind-v COMMAND --help` prints them.

"""


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order --help lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        name = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}` (positional)"
        if action.option_strings and action.nargs != 0:
            metavar = action.metavar or (("{" + ",".join(map(str, action.choices)) + "}") if action.choices
                                         else action.dest.upper())
            name += f" `{metavar}`"
        default = action.default
        shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else f"`{default}`"
        if action.required:
            shown = "required"
        rows.append(f"| {_cell(name)} | {_cell(shown)} | {_cell(formatter._expand_help(action) if action.help else '')} |")
    return rows


def _section(path: list[str], summary: str, parser: argparse.ArgumentParser, out: list[str]) -> None:
    subs = _subcommands(parser)
    out.append(f"{'#' * min(len(path) + 1, 4)} `{' '.join(path)}`\n")
    if summary:
        out.append(summary[0].upper() + summary[1:] + ".\n" if not summary.endswith(".") else summary + "\n")
    if parser.description and parser.description != summary:
        out.append(parser.description.strip() + "\n")
    out.append("```text\n" + parser.format_usage().strip() + "\n```\n")
    rows = _option_rows(parser)
    if rows:
        out.append("| option | default | what it does |\n|---|---|---|\n" + "\n".join(rows) + "\n")
    for name, helptext, sub in subs:
        _section(path + [name], helptext, sub, out)


def cli_markdown() -> str:
    """The whole reference as one Markdown page."""
    parser = build_parser()
    out = [HEADER, "Commands: " + ", ".join(f"[`{n}`](#minimind-v-{n})" for n, _, _ in _subcommands(parser)) + ".\n"]
    for name, helptext, sub in _subcommands(parser):
        _section(["minimind-v", name], helptext, sub, out)
    return "\n".join(out)


def on_pre_build(config, **_kw) -> None:
    """mkdocs hook: write the page only when it changed (so `mkdocs serve` does not rebuild forever)."""
    page = Path(config.docs_dir) / "reference" / "cli.md"
    text = cli_markdown()
    if not page.is_file() or page.read_text() != text:
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(text)
