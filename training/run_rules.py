"""The rules a user meets around a run's folder and lifetime (docs/training.md §4):

* **Resume rule.** An ``output_dir`` holding an earlier run (its ``config.yaml`` beside a final model or a
  complete checkpoint) is continued only by a config that differs from the saved one in fields that
  cannot change what a step does (:data:`~.config.TrainConfig.changeable_on_resume`: the step budget
  ``max_steps`` and how the run is watched, saved and placed). Anything else is refused, naming each
  differing field (old -> new), because the weights in the folder would not be what ``config.yaml`` then
  says. ``overwrite`` (``--overwrite``) deletes the earlier run first, but only from a folder that looks
  like a run (:func:`delete_earlier_run`); ``resume=never`` starts over in place and removes the earlier
  run's weights (final model and checkpoints) so that none outlive the config that described them.
* **Progress off a terminal.** tqdm bars are for terminals; with stderr redirected, :class:`ProgressLog`
  logs one line every 5 % of the run, and at least every 30 s, through the ``zreward_deploy.training``
  logger (``zreward train`` prints it).
* **Ctrl-C.** :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) says which step the run reached,
  which checkpoint is kept and how to resume; the unfinished step is not saved.
* **Training record.** :func:`training_record` is what a trained model's ``config.training`` holds
  (:func:`zreward_deploy.config.check_training_record`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from zreward_deploy.errors import ZRewardInputError
from zreward_deploy.fileio import check_output_dir, is_within

from .config import TrainConfig, _coerce

RUN_CONFIG = "config.yaml"
# Files every run folder has from its first moment (start_run writes both on the main process): what
# --overwrite needs to see before it deletes a folder, so that `output_dir=~ --overwrite` deletes nothing.
RUN_MARKERS = ("metrics.jsonl", RUN_CONFIG)
# The trainers' methods (`zreward train METHOD`): a config.yaml naming another is not a run's.
METHODS = ("sft", "grpo", "gdso", "risd", "opd")
# Config fields naming files or folders: compared as resolved paths (`data=synth` and `data=./synth` are
# one dataset), unless they name a preset.
PATH_FIELDS = ("data", "model", "teacher", "cache")


# --------------------------------------------------------------------------------------------------
# The earlier run in output_dir
# --------------------------------------------------------------------------------------------------


def read_run_config(output_dir: Path) -> dict[str, Any] | None:
    """The ``config.yaml`` of a training run in ``output_dir`` (a mapping with a ``method``), ``None``
    when there is none, or when the file is not one a trainer wrote (then the folder is not a run)."""
    import yaml

    path = output_dir / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(saved, dict) or saved.get("method") not in METHODS:
        return None
    return saved


def has_weights(output_dir: Path, checkpoint_dir: str, model_dir: str) -> bool:
    """Whether a run folder holds weights: a final model or a complete checkpoint."""
    if (output_dir / model_dir / "config.json").is_file():
        return True
    return any((output_dir / checkpoint_dir).glob("step_*/trainer_state.json"))


def _comparable(name: str, value: Any) -> Any:
    if name in PATH_FIELDS and isinstance(value, str) and value and not value.startswith("preset:"):
        return str(Path(value).expanduser().resolve())
    return value


def config_changes(cfg: TrainConfig, saved: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved value, new value)}`` for every field that differs and may not change on resume
    (:meth:`~.config.TrainConfig.resume_changeable`).

    A field the saved file lacks (written before the field existed) counts as its default; a saved key
    this config does not know is not compared (nothing in this version reads it).
    """
    import dataclasses
    import typing

    changes: dict[str, tuple[Any, Any]] = {}
    if saved.get("method") != cfg.method:
        changes["method"] = (saved.get("method"), cfg.method)
    hints = typing.get_type_hints(type(cfg))
    changeable = cfg.resume_changeable()
    for f in dataclasses.fields(cfg):
        if f.name in changeable:
            continue
        new = getattr(cfg, f.name)
        if f.name in saved:
            old = saved[f.name]
            # e.g. a float written as 1e-3 (YAML text); a value of the wrong type is compared as written
            with contextlib.suppress(ZRewardInputError):
                old = _coerce(f.name, old, hints[f.name])
        elif f.default is not dataclasses.MISSING:
            old = f.default
        else:
            old = None
        if _comparable(f.name, old) != _comparable(f.name, new):
            changes[f.name] = (old, new)
    return changes


def check_continues_earlier_run(cfg: TrainConfig, saved: Mapping[str, Any], output_dir: Path) -> None:
    """Refuse a config that differs from the earlier run's (``saved``) in a field that changes training.

    Raises:
        ZRewardInputError: naming ``output_dir``, each differing field (old -> new) and the two ways on.
    """
    changes = config_changes(cfg, saved)
    if not changes:
        return
    listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
    raise ZRewardInputError(
        str(output_dir),
        f"holds an earlier {saved.get('method')} run with other settings ({listed}); its weights are "
        "that run's, so it cannot be continued with these. Pass --overwrite (overwrite=true) to delete it "
        "and start over, or choose another output_dir (a resume may change only max_steps and the "
        "logging, evaluation, checkpoint and device settings; docs/training.md §4)",
    )


def schedule_change_warning(cfg: TrainConfig, saved: Mapping[str, Any], step: int) -> str | None:
    """The warning for a resume with another step budget under a decaying learning-rate schedule: the
    steps after ``step`` follow the schedule of the new budget, which no uninterrupted run would have."""
    old = saved.get("max_steps")
    if cfg.lr_scheduler == "constant" or old == cfg.max_steps or step >= cfg.max_steps:
        return None
    return (
        f"max_steps changed from {old} to {cfg.max_steps} under lr_scheduler={cfg.lr_scheduler}: from step "
        f"{step} the learning rate follows the schedule of a {cfg.max_steps}-step run, so the weights "
        f"will differ from a run trained to step {cfg.max_steps} from the start"
    )


def delete_earlier_run(cfg: TrainConfig, delete: bool = True) -> None:
    """``overwrite``: delete ``output_dir`` when it holds an earlier run, after checking that it looks
    like one (:data:`RUN_MARKERS`, and a ``config.yaml`` a trainer wrote) and holds none of the run's
    inputs. With ``delete=False`` only the checks run (every process checks, so that all of them stop
    together on a refusal; the main process deletes).

    Raises:
        ZRewardInputError: the folder is not empty but is not a run folder (``output_dir=~`` with
            ``--overwrite`` deletes nothing), it contains the dataset or a model the run reads, or it is a
            file.
    """
    out = Path(cfg.output_dir)
    inputs = [getattr(cfg, name, "") for name in PATH_FIELDS if name != "cache"]
    for source in inputs:
        if source and not str(source).startswith("preset:") and is_within(source, out):
            raise ZRewardInputError(
                str(out), f"contains the run's input {str(source)!r}; --overwrite would delete it"
            )
    check_output_dir(out, overwrite=True, flag="--overwrite", marker=RUN_MARKERS)
    if not out.is_dir() or not any(out.iterdir()):
        return
    if read_run_config(out) is None:
        raise ZRewardInputError(
            str(out),
            f"is not empty and its {RUN_CONFIG} was not written by `zreward train`; --overwrite only "
            "deletes a training run's folder: choose another output_dir, or empty it yourself",
        )
    if delete:
        shutil.rmtree(out)


def delete_earlier_weights(output_dir: Path, checkpoint_dir: str, model_dir: str) -> None:
    """``resume=never`` in a run folder: remove the earlier run's final model and checkpoints (other
    files, such as a RISD teacher cache, stay) so that no weights outlive the config that described
    them."""
    for name in (model_dir, checkpoint_dir):
        if (output_dir / name).is_dir():
            shutil.rmtree(output_dir / name)


# --------------------------------------------------------------------------------------------------
# The training record
# --------------------------------------------------------------------------------------------------


def training_record(
    cfg: TrainConfig,
    dimensions: Sequence[str],
    step: int,
    metrics: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """What ``model.config.training`` holds after ``step`` steps of ``cfg``: the method, the rubric
    dimensions the data trained (``dimensions``), the dataset and the start model as given, the step,
    and the final metrics (non-finite values as ``None``: JSON has no NaN)."""
    record: dict[str, Any] = {
        "method": cfg.method,
        "dimensions": list(dimensions),
        "data": cfg.data,
        "steps": int(step),
        "base": cfg.model,
    }
    if metrics:
        record["metrics"] = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
    return record


# --------------------------------------------------------------------------------------------------
# Progress off a terminal
# --------------------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``45s``, ``3m20s``, ``2h05m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressLog:
    """The progress bar's stand-in when stderr is not a terminal (a log file, a pipe, a batch job).

    Logs ``sft: step 40/200  loss 0.5120  1.30 s/step  eta 3m28s`` through ``log`` after the first step
    of the run, then every ``every`` steps (default: 5 % of ``total``), whenever ``seconds`` passed since
    the last line, and at the last step. The same calls as the tqdm bar it replaces: ``update``,
    ``set_postfix``, and ``with``.
    """

    def __init__(
        self,
        desc: str,
        total: int,
        initial: int,
        log: Callable[[str], None],
        every: int | None = None,
        seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.desc, self.total, self.initial, self.n = desc, total, initial, initial
        self.every = every or max(1, total // 20)
        self.seconds, self.clock, self.log = seconds, clock, log
        self.started = self.last_line = clock()
        self.postfix: dict[str, Any] = {}

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_postfix(self, values: Mapping[str, Any]) -> None:
        self.postfix = dict(values)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        due = (
            self.n == self.initial + 1
            or self.n % self.every == 0
            or self.n >= self.total
            or now - self.last_line >= self.seconds
        )
        if due:
            self.last_line = now
            self.log(self.line(now))

    def line(self, now: float) -> str:
        per_step = (now - self.started) / max(1, self.n - self.initial)
        values = "".join(f"  {k} {v}" for k, v in self.postfix.items())
        eta = format_duration(per_step * max(0, self.total - self.n))
        return f"{self.desc}: step {self.n}/{self.total}{values}  {per_step:.2f} s/step  eta {eta}"


# --------------------------------------------------------------------------------------------------
# Ctrl-C
# --------------------------------------------------------------------------------------------------


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during the training loop; ``str()`` is the one-line message for the user (the step
    reached, the checkpoint kept, how to resume). Still a ``KeyboardInterrupt``, so code that stops on
    one stops on this."""

    def __init__(self, message: str, is_main_process: bool = True):
        super().__init__(message)
        self.message = message
        self.is_main_process = is_main_process

    def __str__(self) -> str:
        return self.message


def interrupted_message(
    cfg: TrainConfig, step: int, checkpoint: Path | None, kept_step: int | None, in_output_dir: bool = True
) -> str:
    """The one line a Ctrl-C at ``step`` (steps completed) ends with. ``checkpoint`` (at ``kept_step``)
    is where a rerun continues: ``output_dir``'s latest (``in_output_dir``), which ``resume=auto`` takes,
    or the ``resume=PATH`` checkpoint the same command loads again; ``None`` when there is neither."""
    head = f"{cfg.method}: interrupted at step {step} of {cfg.max_steps} (the unfinished step is not saved)"
    if checkpoint is None:
        when = (
            f"every {cfg.save_every} steps" if cfg.save_every else "only at the end; save_every=N saves more"
        )
        return f"{head}; no checkpoint was saved yet ({when}), so running again starts from step 0"
    changes = []
    if in_output_dir and cfg.resume != "auto":
        changes.append("with resume=auto")
    if cfg.overwrite:
        changes.append("without --overwrite")
    again = "run the command again " + " and ".join(changes) if changes else "run the same command again"
    return (
        f"{head}; last checkpoint: {checkpoint} (step {kept_step}); {again} to resume from step {kept_step}"
    )
