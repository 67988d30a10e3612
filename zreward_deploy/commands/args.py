"""Argument conventions shared by every ``zreward`` command.

* List flags (``--dimensions``, ``--batch-sizes`` ...) take one comma-separated value: ``a,b,c``.
  Empty entries (``","``, ``"a,,b"``) are refused with the flag's name, never silently dropped.
* ``--device`` is checked at once (:func:`zreward_deploy.devices.resolve_device`), so a CPU-only build
  asked for CUDA answers with one line instead of a traceback from deep inside ``model.to``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ZRewardInputError

T = TypeVar("T")


def parse_list(text: str | None, flag: str, cast: Callable[[str], T] = str) -> list[T] | None:
    """``"a,b"`` -> ``["a", "b"]`` (``None`` for an absent flag); empty entries and values ``cast``
    refuses raise :class:`ZRewardInputError` naming ``flag``."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise ZRewardInputError(flag, f"expected comma-separated values such as a,b; got {text!r}")
    try:
        return [cast(p) for p in parts]
    except (TypeError, ValueError):
        raise ZRewardInputError(flag, f"{text!r} is not a comma-separated list of {cast.__name__}") from None


def check_device(text: str | None, flag: str = "--device") -> Any:
    """The ``torch.device`` for ``text``, or a one-line :class:`ZRewardInputError` naming ``flag``."""
    from ..devices import resolve_device

    return resolve_device(text, flag)
