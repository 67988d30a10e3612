"""The metrics log of a run: ``output_dir/metrics.jsonl`` (one JSON object per logged step) and optional
TensorBoard scalars, written by the main process (:class:`MetricsWriter`) and read back by
:func:`read_metrics`.

Resume tolerates a cut last line (what an interrupted append leaves: dropped, with a warning); any other
line that is not a JSON object is an error naming the line (docs/training.md §4).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from zreward_deploy.errors import ZRewardInputError
from zreward_deploy.fileio import atomic_write_text

from .config import ConfigError

METRICS_FILE = "metrics.jsonl"

# the trainers' logger (`zreward train` prints its warnings)
logger = logging.getLogger("zreward_deploy.training")


def _read_metrics_file(path: Path, warn: Callable[[str], None]) -> list[tuple[str, dict[str, Any]]]:
    """``(line, row)`` of each line of a ``metrics.jsonl``.

    A last line that is not a JSON object is what an interrupted append leaves (power loss, full disk:
    a cut line, or zero bytes): it is dropped and ``warn`` says so. Anything else that is not a JSON
    object was not written by this code, and is an error naming the line.
    """
    lines = [
        (number, raw)
        for number, raw in enumerate(path.read_bytes().split(b"\n"), 1)
        if raw.strip(b" \t\r\0")  # a crash may leave zero-filled blocks
    ]
    out = []
    for position, (number, raw) in enumerate(lines):
        try:
            text = raw.decode("utf-8")
            row = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError):
            row = None
        if isinstance(row, dict):
            out.append((text, row))
        elif position == len(lines) - 1:
            warn(f"{path}: its last line (line {number}) was cut short by an interrupted write; dropped it")
        else:
            raise ZRewardInputError(
                str(path),
                f"line {number} is not a JSON object (the file was edited or damaged); fix or delete that "
                "line, or move the file away, and run again",
            )
    return out


class MetricsWriter:
    """``metrics.jsonl`` (one JSON object per logged step) and optional TensorBoard scalars, on the main
    process only. On resume, lines after the resumed step are dropped, so a resumed run's log reads like
    an uninterrupted one; a cut last line (an interrupted write) is dropped with a warning."""

    def __init__(self, output_dir: Path, enabled: bool, resume_step: int = 0, tensorboard: bool = False):
        self.enabled = enabled
        self.path = output_dir / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        kept = []
        if resume_step and self.path.exists():
            for line, row in _read_metrics_file(self.path, logger.warning):
                if row.get("step", 0) <= resume_step:
                    kept.append(line + "\n")
        atomic_write_text(self.path, "".join(kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "tensorboard", "needs the 'tensorboard' package: pip install tensorboard"
                ) from None
            self._tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=resume_step + 1)

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **values}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``output_dir/metrics.jsonl`` (a cut last line is dropped with a warning)."""
    path = Path(output_dir) / METRICS_FILE
    return [row for _, row in _read_metrics_file(path, logger.warning)]
