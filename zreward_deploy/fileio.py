"""Reading and writing files so that nothing half-written is ever loaded and nothing hangs.

Shared by every part of the package that writes a folder (model save, export, training checkpoints, data
synth, benchmarks) or reads a file a user named (images, datasets, model folders):

* :func:`open_regular_file` opens a path only if it is a regular file. A FIFO, a socket or a device named
  as an image would block every reader forever (opening a FIFO for reading waits for a writer), so the
  file is opened non-blocking and checked with ``fstat`` on the open descriptor (no race between a check
  and the open).
* :func:`atomic_write_text` / :func:`atomic_write_bytes`: write a temporary sibling, ``fsync``, rename.
* :func:`atomic_directory`: build a folder under a temporary sibling name and rename it into place when the
  ``with`` block succeeds; on any error (or a kill) the destination keeps its previous content.
* :func:`check_output_dir`: the one rule for every command that writes a folder: it must not be a file,
  must be empty unless ``overwrite`` (the message names the ``--overwrite`` flag), must be writable, and
  must not be (or contain) a folder the command reads from.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ZRewardInputError


def open_regular_file(
    path: str | os.PathLike, error: type[ZRewardInputError] = ZRewardInputError
) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file; raise ``error(path, reason)`` otherwise.

    Missing files, folders, FIFOs, sockets and devices are refused without ever blocking; a permission
    problem is reported the same way.
    """
    name = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(name, flags)
    except FileNotFoundError:
        raise error(name, "file does not exist") from None
    except IsADirectoryError:
        raise error(name, "is a directory, not a file") from None
    except OSError as exc:
        raise error(name, f"cannot be opened: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise error(name, "is a directory, not a file")
        if not stat.S_ISREG(mode):
            kind = (
                "a FIFO"
                if stat.S_ISFIFO(mode)
                else "a socket"
                if stat.S_ISSOCK(mode)
                else "a device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "not a regular file"
            )
            raise error(name, f"is {kind}; only regular files are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_json_object(
    path: str | os.PathLike, error: type[ZRewardInputError] = ZRewardInputError
) -> dict[str, Any]:
    """A JSON file that must hold one object; anything else raises ``error(path, reason)``: not a regular
    file, not UTF-8, not JSON, nested too deep, or a JSON value that is not an object."""
    with open_regular_file(path, error) as f:
        raw = f.read()
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(os.fspath(path), f"is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise error(os.fspath(path), f"must hold a JSON object, got {type(value).__name__}")
    return value


def is_regular_file(path: str | os.PathLike) -> bool:
    """True for a regular file (following symlinks); never blocks on FIFOs."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable; not every platform or file system allows opening a folder.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a reader sees the old file or the whole new one."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(final.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file under ``folder``: done before a folder is renamed into place, since after a power
    loss the rename may otherwise survive while the files' data does not (a complete-looking folder of
    empty files)."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing what is there.

    The files of ``tmp`` are fsynced first. ``os.replace`` cannot replace a non-empty folder, so the old
    one is first renamed aside and deleted after the new one is in place: at every instant ``final`` is either the old folder, absent, or the
    whole new one, never a mix.
    """
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists() or final.is_symlink():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists() or old.is_symlink():
        old.unlink()


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; move it to ``final`` when the block succeeds.

    On an exception the temporary folder is deleted and ``final`` is left as it was. A kill leaves at most
    a hidden ``.NAME.tmp-*`` sibling, never a partly written ``final``. The caller decides beforehand
    whether replacing ``final`` is allowed (:func:`check_output_dir`).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private (0700); a saved folder gets the usual permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def is_within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` is ``root`` or lies inside it, after resolving symlinks and ``..``."""
    p, r = Path(path).resolve(), Path(root).resolve()
    return p == r or r in p.parents


def check_output_dir(
    path: str | os.PathLike,
    overwrite: bool = False,
    flag: str = "--overwrite",
    protect: Iterable[str | os.PathLike] = (),
    marker: Iterable[str] = (),
) -> Path:
    """Check that a command may write the folder ``path``; raise :class:`ZRewardInputError` naming it.

    Refused: a path that is a file; a non-empty folder unless ``overwrite`` (the message names ``flag``);
    with ``overwrite``, a non-empty folder holding none of the ``marker`` files (glob patterns of files a
    folder of this kind always has, e.g. ``config.json`` for a model): replacing deletes the folder, and a typo such as
    ``--out ~`` must not delete a home directory; a folder whose parent cannot be written; a folder that
    is, contains or lies inside one of ``protect`` (the command's inputs, e.g. the source model of an
    export).
    """
    out = Path(path)
    for source in protect:
        if source is not None and (is_within(out, source) or is_within(source, out)):
            raise ZRewardInputError(
                str(out), f"is the same as, inside, or contains the input {str(source)!r}; choose another"
            )
    if out.exists() and not out.is_dir():
        raise ZRewardInputError(str(out), "is a file, not a folder; choose a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ZRewardInputError(
                str(out), f"folder is not empty; choose another or pass {flag} to replace it"
            )
        markers = list(marker)
        if markers and not any(any(out.glob(pattern)) for pattern in markers):
            raise ZRewardInputError(
                str(out),
                f"is not empty and does not look like an output of this command (none of {markers}); "
                f"{flag} only replaces such a folder: choose another, or empty it yourself",
            )
    parent = out.resolve().parent  # the folder is built beside `out` and renamed into place
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ZRewardInputError(str(out), f"cannot be written: {str(parent)!r} is not writable")
    return out
