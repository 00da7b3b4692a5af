"""The project's command line: ``python -m pipeline <command> ...``.

Each sub-module registers one command group through ``add_parser(subparsers)`` and sets ``func`` on its parser;
``func(args)`` returns the process exit status.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import compare, data, denoise, experiment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="DiffNet MRI denoising: compare denoisers, run the paper experiments, check data manifests, denoise scans.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (compare, data, denoise, experiment):
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # an ASCII-only terminal (e.g. LC_ALL=C) shows "?" for the "±" of the tables instead of failing the run;
        # the files written are UTF-8 whatever the locale
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
