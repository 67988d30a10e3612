"""Progress of long ``zreward refl`` work on stderr: a self-overwriting line on a terminal; when stderr is
redirected, one line per 10 % of the work (and the last), so that a log shows the run is alive."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


class Progress:
    """``bar.update(done, note)`` after each unit of ``total``.

    Args:
        label: what is being done ("pretrain generator").
        total: units of work.
        enabled: print nothing when False.
        log: where lines go (default: stderr; a terminal gets one self-overwriting line).
    """

    def __init__(
        self, label: str, total: int, enabled: bool = True, log: Callable[[str], None] | None = None
    ):
        self.label, self.total, self.enabled, self.log = label, max(1, total), enabled, log
        self.tty = log is None and sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.decile = 0

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self.start
        text = f"{self.label}: {done}/{self.total} ({100 * done // self.total}%), {elapsed:.0f} s"
        if note:
            text += f", {note}"
        if self.tty:
            if done >= self.total or now - self.last >= 0.2:
                sys.stderr.write("\r" + text + ("\n" if done >= self.total else ""))
                sys.stderr.flush()
                self.last = now
            return
        decile = 10 * done // self.total
        if decile > self.decile or done >= self.total:
            self.decile = decile
            (self.log or _stderr)(text)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
