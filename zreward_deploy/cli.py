"""The ``zreward`` command line: ``zreward <group> <command> ...``.

Thin by design: each command group lives in ``zreward_deploy/commands/<group>.py`` with a
``register(subparsers)`` function that only declares arguments; the command functions import the heavy
libraries (torch, transformers, onnxruntime, ...) when they run, so ``zreward --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import MissingDependencyError, ZRewardInputError

# Command modules, in the order their groups appear in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "zreward_deploy.commands.demo",
    "zreward_deploy.commands.score",
    "zreward_deploy.commands.model",
    "zreward_deploy.commands.data",
    "zreward_deploy.commands.eval",
    "zreward_deploy.commands.export",
    "zreward_deploy.commands.bench",
    "zreward_deploy.commands.train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zreward",
        description="Z-Reward: score-distribution reward models for text-to-image, trained and deployed fast.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # a real import error inside the module: surface it
                raise
            continue  # group not present in this build
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ZRewardInputError, MissingDependencyError) as exc:
        print(f"zreward: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
