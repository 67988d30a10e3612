"""The ``zreward`` command line: ``zreward <group> <command> ...``.

Errors: bad input (:class:`ZRewardInputError`) and missing extras print one line and exit 2; a failed file
operation (read-only folder, full disk) prints the path and the system's reason and exits 1; a closed
output pipe (``| head``) exits 141 quietly; Ctrl-C prints one line and exits 130. Set ``ZREWARD_DEBUG=1``
to get the traceback instead.

Thin by design: each command group lives in ``zreward_deploy/commands/<group>.py`` with a
``register(subparsers)`` function that only declares arguments; the command functions import the heavy
libraries (torch, transformers, onnxruntime, ...) when they run, so ``zreward --help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

from .errors import MissingDependencyError, ZRewardInputError

# Command modules, in the order their groups appear in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "zreward_deploy.commands.demo",
    "zreward_deploy.commands.score",
    "zreward_deploy.commands.serve",
    "zreward_deploy.commands.model",
    "zreward_deploy.commands.data",
    "zreward_deploy.commands.eval",
    "zreward_deploy.commands.export",
    "zreward_deploy.commands.bench",
    "zreward_deploy.commands.train",
    "zreward_deploy.commands.refl",
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
        if os.environ.get("ZREWARD_DEBUG"):
            raise
        print_error(str(exc))
        return 2
    except BrokenPipeError:
        # `zreward ... --json | head`: the reader closed the pipe; that is not an error of ours. Point
        # stdout at /dev/null so that the interpreter's final flush does not raise again.
        with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout may have no descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130  # 128 + SIGINT
    except OSError as exc:
        # A read-only folder, a full disk, a missing parent: the system's own words and the path, in one
        # line (ZREWARD_DEBUG=1 shows the traceback instead).
        if os.environ.get("ZREWARD_DEBUG"):
            raise
        print_error(os_error_message(exc))
        return 1


def print_error(message: str) -> None:
    """``zreward: error: ...`` on stderr; characters the terminal cannot encode (a lone surrogate from an
    undecodable file name) are escaped instead of raising while reporting the error."""
    line = f"zreward: error: {message}"
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    # one write of the whole line: processes of a multi-process run report at the same moment, and
    # print()'s separate write of the newline lets their lines run into each other
    sys.stderr.write(line.encode(encoding, "backslashreplace").decode(encoding) + "\n")
    sys.stderr.flush()


def os_error_message(exc: OSError) -> str:
    """``'path': Permission denied`` from an OSError (both paths for a failed rename or copy)."""
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(repr(str(p)) for p in paths)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{where}: {reason}" if where else reason


if __name__ == "__main__":
    sys.exit(main())
