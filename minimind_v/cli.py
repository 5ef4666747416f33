"""The `minimind-v` command. Each subcommand lives beside the stage it drives; this file only dispatches.

Every subcommand module exposes `add_parser(subparsers)` which registers itself and sets `func`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `--help` lists them (data -> quickstart -> train -> eval -> serve / interop).
COMMANDS = [
    "minimind_v.data.cli_data",
    "minimind_v.quickstart",
    "minimind_v.train.cli_train",
    "minimind_v.eval.cli_eval",
    "minimind_v.infer.cli_infer",
    "minimind_v.infer.server",
    "minimind_v.infer.web",
    "minimind_v.interop.cli_interop",
]


class OneLineErrors(argparse.ArgumentParser):
    """A mistake on the command line is one line and exit code 2 (subcommands' parsers are of this class too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="minimind-v", description="Train, evaluate and serve a tiny VLM.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError, OverflowError) as e:  # OSError: missing files, a port in use
        print(f"minimind-v {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
