"""One training run: its config, the accelerator, the output folder and the metrics log (:class:`Run`),
how a run starts (:func:`start_run`), and what a trainer returns (:class:`TrainResult`).

Multi-process runs (``accelerate launch``, ``torchrun``) use the same code as one process:

* Every process sees the same *global* batch of indices (:class:`~.loop.EpochSampler`) and takes its
  own contiguous slice (:meth:`Run.local`), so the data order does not depend on the number of processes.
* The model is wrapped once with ``accelerator.prepare`` (:class:`~.models.TrainingForward`).
* DDP averages gradients over processes, so each process's loss must be its share of the global mean:
  a mean over equally many items per process is (the batch is split evenly); a masked mean is not, so
  trainers normalise masked sums by the global count (:meth:`Run.global_count`).
* The LR scheduler is *not* passed to ``accelerate.prepare`` (accelerate would step it once per process
  per update); it is stepped once per optimizer update on every process.

``output_dir`` follows the rules of :mod:`.run_rules` (resume, ``overwrite``, ``resume=never``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zreward_deploy.fileio import atomic_write_text

from .checkpoints import (
    CHECKPOINT_DIR,
    LATEST_FILE,
    MODEL_DIR,
    find_resume_checkpoint,
    no_warning,
    read_trainer_state,
)
from .config import ConfigError, TrainConfig
from .metrics_log import MetricsWriter
from .run_rules import (
    RUN_CONFIG,
    ProgressLog,
    check_continues_earlier_run,
    delete_earlier_run,
    delete_earlier_weights,
    has_weights,
    read_run_config,
    schedule_change_warning,
)

# the trainers' logger (`zreward train` prints it: warnings, the resume line, progress off a terminal)
logger = logging.getLogger("zreward_deploy.training")


@dataclass
class TrainResult:
    """What a trainer returns: where things are and what was logged."""

    output_dir: Path
    model_dir: Path
    steps: int
    history: list[dict[str, Any]]
    final_eval: dict[str, float] | None = None
    is_main_process: bool = True  # False on the other processes of a multi-process run
    skipped_items: int = 0  # training records left out because their image does not decode
    start_step: int = 0  # the step the run resumed from (0: a fresh run); steps - start_step were trained
    already_trained: bool = False  # output_dir held a run already at max_steps: nothing was trained or saved

    @property
    def steps_trained(self) -> int:
        return self.steps - self.start_step


@dataclass
class Run:
    """One training run: its config, the accelerator, the output folder and the metrics log."""

    config: TrainConfig
    accelerator: Any
    output_dir: Path
    metrics: MetricsWriter
    resume_from: Path | None = None
    started: float = field(default_factory=time.perf_counter)
    start_step: int = 0  # the step resumed from (0 for a fresh run)
    # True when the run resumed at or past max_steps and output_dir holds its final model: nothing to do
    # (the trainers return :meth:`already_trained_result` before loading anything)
    already_trained: bool = False

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def local(self, global_batch: Sequence[int]) -> list[int]:
        """This process's contiguous slice of a global batch (the batch size is divisible by the world
        size, checked at start)."""
        per = len(global_batch) // self.world_size
        return list(global_batch[self.rank * per : (self.rank + 1) * per])

    def local_offset(self, global_batch: Sequence[int]) -> int:
        """Position of this process's first item in the global batch."""
        return self.rank * (len(global_batch) // self.world_size)

    def global_count(self, count: torch.Tensor | float) -> torch.Tensor:
        """Sum of a per-process count over processes (e.g. labelled entries, for a global mean)."""
        t = torch.as_tensor(count, dtype=torch.float32, device=self.device).reshape(1)
        return self.accelerator.reduce(t, reduction="sum")[0] if self.world_size > 1 else t[0]

    def mean_over_processes(self, values: Mapping[str, float]) -> dict[str, float]:
        """Average logged scalars over processes (each process logs its share of the batch)."""
        if self.world_size == 1 or not values:
            return {k: float(v) for k, v in values.items()}
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        t = self.accelerator.reduce(t, reduction="mean")
        return dict(zip(keys, t.tolist(), strict=True))

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def progress(self, total: int, initial: int) -> Any:
        """A tqdm bar on a terminal; off a terminal (stderr redirected) a :class:`~.run_rules.ProgressLog`
        that logs a line every 5% of the run and at least every 30 s; nothing with ``progress=false`` or on
        the other processes."""
        from tqdm.auto import tqdm

        show = self.config.progress and self.is_main
        if show and not sys.stderr.isatty():
            return ProgressLog(self.config.method, total, initial, logger.info)
        return tqdm(total=total, initial=initial, disable=not show, desc=self.config.method, unit="step")

    def already_trained_result(self) -> TrainResult:
        """The result of a run that had nothing to do (:attr:`already_trained`)."""
        return TrainResult(
            self.output_dir,
            self.output_dir / MODEL_DIR,
            self.start_step,
            [],
            is_main_process=self.is_main,
            start_step=self.start_step,
            already_trained=True,
        )


# Trainers that sample with ``generate_reasoning`` on the unwrapped model, which needs every parameter whole.
SAMPLING_METHODS = ("grpo", "gdso", "opd")


def check_distributed_support(method: str, distributed_type: str) -> None:
    """Refuse FSDP for the trainers that sample rollouts: under FSDP each process holds a shard of the
    weights, and sampling would need ``summon_full_params`` around ``generate_reasoning`` (not implemented;
    docs/training.md §5). DDP, one process and the students under FSDP are fine."""
    if method in SAMPLING_METHODS and distributed_type.upper().endswith("FSDP"):
        raise ConfigError(
            "distributed_type",
            f"{method} samples rollouts from the full model, which FSDP shards; launch it with DDP "
            "(`accelerate launch --multi_gpu`) instead; FSDP is supported for sft and risd",
        )


def _accelerator(cfg: TrainConfig) -> Any:
    """Set threads and create the accelerator; check that it can run ``cfg`` (FSDP, the batch split)."""
    from accelerate import Accelerator

    if cfg.device == "cuda":
        from zreward_deploy.devices import resolve_device

        resolve_device("cuda", "device")  # a CPU-only build or no visible GPU: one line naming the field
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # cpu=True unless a GPU is visible (or device=cpu): one CPU process, or gloo across processes started
    # by torchrun or `accelerate launch --multi_gpu` (docs/training.md §5)
    use_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=use_cpu)
    check_distributed_support(cfg.method, str(accelerator.distributed_type))
    if cfg.batch_size % accelerator.num_processes:
        raise ConfigError(
            "batch_size",
            f"the global batch of {cfg.batch_size} does not split evenly over {accelerator.num_processes} "
            "processes",
        )
    return accelerator


def _earlier_run(cfg: TrainConfig, accelerator: Any) -> dict[str, Any] | None:
    """Apply ``overwrite`` and ``resume=never`` to ``output_dir``'s earlier run, and check that this
    config may continue what is left. Returns the earlier run's saved config, ``None`` if there is none
    to continue (or it was deleted)."""
    out = Path(cfg.output_dir)
    is_main = accelerator.is_main_process
    if cfg.overwrite:
        delete_earlier_run(cfg, delete=is_main)  # every process checks, so a refusal stops them all
        accelerator.wait_for_everyone()
    saved = read_run_config(out)
    if saved is not None and not has_weights(out, CHECKPOINT_DIR, MODEL_DIR):
        saved = None  # a run stopped before its first checkpoint: nothing in the folder to keep apart
    if saved is not None and cfg.resume == "never":
        if is_main:
            delete_earlier_weights(out, CHECKPOINT_DIR, MODEL_DIR)
        accelerator.wait_for_everyone()
        saved = None
    if saved is not None:
        check_continues_earlier_run(cfg, saved, out)
    return saved


def start_run(cfg: TrainConfig) -> Run:
    """Set threads, create the accelerator, check the batch split, prepare ``output_dir`` and find the
    checkpoint to resume from.

    ``output_dir`` follows the rules of :mod:`.run_rules`: ``overwrite`` deletes an earlier run first;
    ``resume=never`` removes its weights; otherwise an earlier run is continued only by a config that
    differs from its ``config.yaml`` in :attr:`~.config.TrainConfig.changeable_on_resume` fields
    (``ZRewardInputError`` naming the others). ``config.yaml`` is written, except when the run already
    reached ``max_steps`` (then it still describes the weights): with its final model there, the run is
    :attr:`Run.already_trained` and the trainer returns at once.
    """
    accelerator = _accelerator(cfg)
    out = Path(cfg.output_dir)
    is_main = accelerator.is_main_process
    saved = _earlier_run(cfg, accelerator)
    resume_from = find_resume_checkpoint(cfg, logger.warning if is_main else no_warning)
    step = read_trainer_state(resume_from)["step"] if resume_from else 0
    reached = resume_from is not None and step >= cfg.max_steps
    already_trained = reached and (out / MODEL_DIR / "config.json").is_file()
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not (reached and (out / RUN_CONFIG).is_file()):
            atomic_write_text(out / RUN_CONFIG, cfg.to_yaml())
        if cfg.resume == "never":
            # a fresh run must not leave `latest` naming an older run's checkpoint until its first save
            (out / CHECKPOINT_DIR / LATEST_FILE).unlink(missing_ok=True)
        if resume_from is not None and not reached:
            logger.info(
                f"{cfg.method}: resumed from step {step} (checkpoint {resume_from}); training to step "
                f"{cfg.max_steps}"
            )
            note = schedule_change_warning(cfg, saved, step) if saved is not None else None
            if note:
                logger.warning(note)
    accelerator.wait_for_everyone()
    metrics = MetricsWriter(
        out, enabled=is_main and not already_trained, resume_step=step, tensorboard=cfg.tensorboard
    )
    return Run(cfg, accelerator, out, metrics, resume_from, start_step=step, already_trained=already_trained)
