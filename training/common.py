"""What every trainer shares, kept small and explicit: the run (accelerate, seeding, output folder),
model loading, optimizer and schedule, the data order, atomic checkpoints with exact resume, the
metrics log (JSONL, progress bar, optional TensorBoard), the loop's plumbing (:class:`TrainLoop`: what
each trainer does around its own loss) and evaluation during and after training.

Multi-process runs (``accelerate launch``, ``torchrun``) use the same code as one process:

* Every process sees the same *global* batch of indices (:class:`EpochSampler`) and takes its own
  contiguous slice (:meth:`Run.local`), so the data order does not depend on the number of processes.
* The model is wrapped once with ``accelerator.prepare`` (DDP on CPUs with gloo and on GPUs; FSDP when
  configured) inside :class:`TrainingForward`, a module whose ``forward`` runs whichever pass training
  needs (the student's one-pass scoring or the teacher-forced reasoning). Every gradient-carrying pass
  goes through the wrapper's ``forward``, which is what DDP needs to synchronise gradients.
* DDP averages gradients over processes, so each process's loss must be its share of the global mean:
  a mean over equally many items per process is (the batch is split evenly); a masked mean is not, so
  trainers normalise masked sums by the global count (:meth:`Run.global_count`).
* The LR scheduler is *not* passed to ``accelerate.prepare`` (accelerate would step it once per process
  per update); it is stepped once per optimizer update on every process.

Checkpoints: ``output_dir/checkpoints/step_XXXXXXXX/`` holds ``model/`` (``save_pretrained``:
safetensors + tokenizer, loadable by ``zreward eval``), ``optimizer.pt``, ``scheduler.pt``,
``trainer_state.json`` (step, data order, method state), one ``rng_state_rank{r}.pt`` per process and any
extra models (GDSO's reference policy). It is written to a temporary folder, every file is fsynced,
``trainer_state.json`` is written last, and the folder is renamed into place
(:func:`zreward_deploy.fileio.replace_dir`), so a crash leaves either the old or the new checkpoint, never
half of one; ``latest`` names the newest. A checkpoint is *complete* when its ``step_*`` folder holds
``trainer_state.json`` (:func:`is_complete_checkpoint`). ``.pt`` files are loaded with
``torch.load(weights_only=True)``.

What a run refuses or tolerates (docs/training.md §4):

* A non-finite loss or gradient norm stops the run (:class:`~.config.NonFiniteLossError`) before the
  optimizer applies the update; non-finite weights are never saved.
* Resume tolerates a cut last line of ``metrics.jsonl`` (dropped, with a warning), a missing RNG file
  (a warning) and a ``latest`` that names a missing or incomplete checkpoint (the newest complete older
  one is used, with a warning). A damaged checkpoint file is an
  :class:`~zreward_deploy.errors.InvalidModelError` naming the file, never a raw exception.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zreward_deploy.errors import InvalidModelError, ZRewardInputError
from zreward_deploy.fileio import atomic_write_text, read_json_object, replace_dir
from zreward_deploy.generation import derive_seed
from zreward_deploy.modeling import ZRewardModel, save_model_dir
from zreward_deploy.processing import ZRewardProcessor

from .config import ConfigError, NonFiniteLossError, TrainConfig
from .data import ImageCache
from .run_rules import (
    RUN_CONFIG,
    ProgressLog,
    TrainingInterrupted,
    check_continues_earlier_run,
    delete_earlier_run,
    delete_earlier_weights,
    has_weights,
    interrupted_message,
    read_run_config,
    schedule_change_warning,
    training_record,
)

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
MODEL_DIR = "model"
METRICS_FILE = "metrics.jsonl"
TRAINER_STATE = "trainer_state.json"

# Warnings of the trainers (damaged files tolerated on resume, skipped images); `zreward train` prints them.
logger = logging.getLogger("zreward_deploy.training")

Warn = Callable[[str], None]


def _no_warning(message: str) -> None:
    """The ``warn`` of the processes other than the main one: one copy of each warning per run."""


# --------------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------------


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def load_model(spec: str, seed: int = 0) -> tuple[ZRewardModel, ZRewardProcessor]:
    """``'preset:NAME'`` -> a fresh preset built with ``seed``; anything else -> a model directory."""
    from zreward_deploy.presets import build_preset

    if spec.startswith("preset:"):
        return build_preset(spec.split(":", 1)[1], seed=seed)
    model = ZRewardModel.from_pretrained(spec)
    return model, ZRewardProcessor.from_pretrained(spec, config=model.config)


def frozen_copy(model: ZRewardModel) -> ZRewardModel:
    """A copy with gradients off and in eval mode (GDSO's π_ref, a distillation teacher)."""
    import copy

    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


class TrainingForward(nn.Module):
    """The one module ``accelerate.prepare`` wraps: its ``forward`` runs the pass a trainer needs.

    ``forward("student", pixel_values=, input_ids=, attention_mask=, suffix_ids=)`` -> the one-pass
    :class:`~zreward_deploy.modeling.ZRewardOutput` with log-probs; ``forward("teacher", pixel_values=,
    prompt_ids=, reasoning_ids=, reasoning_mask=, finished=)`` -> ``teacher_forward``'s
    ``(token_logprobs [N, T], scores)``. Going through ``forward`` (not a method of the inner model) is
    what lets DDP/FSDP see the pass.
    """

    def __init__(self, model: ZRewardModel, processor: ZRewardProcessor):
        super().__init__()
        self.model = model
        self.processor = processor

    def forward(self, kind: str, **inputs: Any) -> Any:
        if kind == "student":
            return self.model(**inputs, return_logprobs=True)
        if kind == "teacher":
            from zreward_deploy.generation import teacher_forward

            return teacher_forward(self.model, self.processor, **inputs, return_logprobs=True)
        raise ValueError(f"unknown pass {kind!r}")


# --------------------------------------------------------------------------------------------------
# Optimizer and schedule
# --------------------------------------------------------------------------------------------------


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (no weight decay on biases and norms, as usual)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        foreach=False,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_updates: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``cfg.warmup_steps`` updates, then constant / linear / cosine decay to 0."""
    warmup = cfg.warmup_steps

    def factor(update: int) -> float:
        if update < warmup:
            return (update + 1) / (warmup + 1)
        if cfg.lr_scheduler == "constant":
            return 1.0
        progress = min(1.0, (update - warmup) / max(1, total_updates - warmup))
        if cfg.lr_scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------------
# Data order
# --------------------------------------------------------------------------------------------------


class EpochSampler:
    """An endless stream of global batches: epoch e is a permutation seeded by ``(seed, e)``, epochs
    follow each other, and a batch may straddle two (no item is dropped). Its state is
    ``(epoch, offset)``, which is all an exact resume needs."""

    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool = True):
        if size < 1:
            raise ZRewardInputError("data", "the training set is empty")
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.epoch, self.offset = 0, 0

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(derive_seed(self.seed, "data", epoch))
        return torch.randperm(self.size, generator=g).tolist()

    def next_batch(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            order = self._order(self.epoch)
            take = order[self.offset : self.offset + self.batch_size - len(out)]
            out += take
            self.offset += len(take)
            if self.offset >= self.size:
                self.epoch, self.offset = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


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
    out = Path(cfg.output_dir)
    is_main = accelerator.is_main_process
    warn = logger.warning if is_main else _no_warning
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
    resume_from = find_resume_checkpoint(cfg, warn)
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


def find_resume_checkpoint(cfg: TrainConfig, warn: Warn = logger.warning) -> Path | None:
    """The checkpoint ``cfg.resume`` asks for: the latest one in ``output_dir`` ('auto', if any), none
    ('never'), or an explicit folder (which must hold a complete checkpoint).

    With 'auto', a ``latest`` that names a missing or incomplete checkpoint (deleted by hand, or a file
    system that lost the rename) falls back to the newest complete checkpoint *older* than the one it
    names, and ``warn`` says so. Newer ``step_*`` folders are not considered: after ``resume=never`` they
    may be left over from an earlier run with another config.
    """
    if cfg.resume == "never":
        return None
    if cfg.resume != "auto":
        path = Path(cfg.resume)
        if not is_complete_checkpoint(path):
            raise ConfigError("resume", f"{path} is not a checkpoint folder (no {TRAINER_STATE})")
        return path
    root = Path(cfg.output_dir) / CHECKPOINT_DIR
    latest = root / LATEST_FILE
    if not latest.is_file():
        return None
    name = latest.read_text(encoding="utf-8", errors="replace").strip()
    path = root / name
    named_step = checkpoint_step(path)
    if named_step is not None and is_complete_checkpoint(path):
        return path
    problem = "is missing" if not path.exists() else f"is incomplete (no {TRAINER_STATE})"
    if named_step is None:
        problem = "is not a checkpoint name"
    older = complete_checkpoints(root, below=named_step)
    if not older:
        raise ConfigError(
            "resume",
            f"{latest} names {name!r}, which {problem}, and {root} holds no older complete checkpoint; "
            "pass resume=never to start over",
        )
    warn(
        f"{latest} names {name!r}, which {problem}; resuming from the newest complete checkpoint, {older[0]}"
    )
    return older[0]


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``step_XXXXXXXX`` checkpoint folder name, ``None`` for any other name."""
    match = re.fullmatch(r"step_(\d+)", path.name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint folder is complete when it holds ``trainer_state.json``: :func:`save_checkpoint`
    writes that file last, after every process's files, inside the temporary folder it then renames.
    (Damage after the fact is what :func:`load_checkpoint` detects.)"""
    return path.is_dir() and (path / TRAINER_STATE).is_file()


def complete_checkpoints(root: Path, below: int | None = None) -> list[Path]:
    """The complete ``step_*`` checkpoints in ``root``, newest first; with ``below``, only those of
    earlier steps."""
    found = []
    for p in root.glob("step_*"):
        step = checkpoint_step(p)
        if step is not None and (below is None or step < below) and is_complete_checkpoint(p):
            found.append((step, p))
    return [p for _, p in sorted(found, reverse=True)]


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors, lists and numbers only (loadable with ``weights_only=True``)."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, inner, gauss = state["python"]
    random.setstate((version, tuple(inner), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrapped_state_dict(run: Run, wrapped: nn.Module) -> dict[str, torch.Tensor]:
    """The inner :class:`ZRewardModel`'s full state dict from the prepared :class:`TrainingForward`
    (``accelerator.get_state_dict`` gathers FSDP shards; on DDP it is the plain state dict)."""
    full = run.accelerator.get_state_dict(wrapped)
    return {k[len("model.") :]: v for k, v in full.items() if k.startswith("model.")}


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_checkpoint(
    run: Run,
    step: int,
    wrapped: nn.Module,
    model: ZRewardModel,
    processor: ZRewardProcessor,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: Mapping[str, Any],
    extra_models: Mapping[str, ZRewardModel] | None = None,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a resumable checkpoint for ``step`` atomically; every process must call it.

    Args:
        wrapped: the prepared :class:`TrainingForward` (its weights are gathered from it).
        model, processor: the inner model (for its config) and its processor.
        state: JSON-able trainer state (``step`` is added; include the sampler's ``state_dict``).
        extra_models: further models to keep (name -> model), e.g. GDSO's π_ref.
        weights: the model's full state dict when the caller already gathered it (to check it).
    """
    root = run.output_dir / CHECKPOINT_DIR
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if weights is None:
        weights = unwrapped_state_dict(run, wrapped)  # collective under FSDP: every process calls it
    if run.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    run.barrier()
    torch.save(_rng_state(), tmp / f"rng_state_rank{run.rank}.pt")
    if run.is_main:
        model.save_pretrained(tmp / MODEL_DIR, state_dict=dict(weights))
        processor.save_pretrained(tmp / MODEL_DIR)
        for name, extra in (extra_models or {}).items():
            extra.save_pretrained(tmp / name)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    run.barrier()  # every process's RNG file is written
    if run.is_main:
        # written last: its presence is what makes a checkpoint complete (is_complete_checkpoint)
        meta = {"step": step, "world_size": run.world_size, **state}
        atomic_write_text(tmp / TRAINER_STATE, json.dumps(meta, indent=2) + "\n")
        replace_dir(tmp, final)
        atomic_write_text(root / LATEST_FILE, final.name)
        # only checkpoints of this run's past count: after resume=never (or resuming from an earlier
        # step) higher-numbered folders are another timeline's, and deleting by position would remove
        # the checkpoint just written
        kept = sorted(
            (s, p) for p in root.glob("step_*") if p.is_dir() and (s := checkpoint_step(p)) is not None
        )
        kept = [p for s, p in kept if s <= step]
        for old in kept[: -run.config.keep_checkpoints]:
            shutil.rmtree(old)
    run.barrier()
    return final


def read_trainer_state(path: Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint (with an integer ``step``).

    Raises:
        InvalidModelError: naming the file when it is missing, not JSON, or has no step.
    """
    file = path / TRAINER_STATE
    if not file.exists():
        raise _damaged(file, "is missing: the checkpoint is incomplete")
    try:
        state = read_json_object(file, InvalidModelError)
    except InvalidModelError as exc:  # again, with the hint of an older checkpoint
        raise _damaged(file, exc.reason) from None
    if type(state.get("step")) is not int or state["step"] < 0:
        raise _damaged(file, "holds no step number")
    return state


def _damaged(file: Path, reason: str) -> InvalidModelError:
    """The error for a damaged checkpoint file; names an older complete checkpoint to resume from, if any
    (it is not loaded instead: the user asked for this one)."""
    checkpoint = next((p for p in file.parents if checkpoint_step(p) is not None), None)
    hint = ""
    if checkpoint is not None:
        older = complete_checkpoints(checkpoint.parent, below=checkpoint_step(checkpoint))
        if older:
            hint = f"; an older complete checkpoint exists: resume={older[0]} continues from it"
    return InvalidModelError(str(file), f"damaged checkpoint file: {reason}{hint}")


def _torch_load(file: Path) -> Any:
    """``torch.load(weights_only=True)``, any failure an :class:`InvalidModelError` naming the file."""
    if not file.is_file():
        raise _damaged(file, "is missing")
    try:
        return torch.load(file, weights_only=True)
    except Exception as exc:  # unpickling, zip and EOF errors all mean the same: unreadable
        # torch's own messages for these run to several lines and suggest weights_only=False: not shown
        reason = "is empty" if file.stat().st_size == 0 else f"cannot be read ({type(exc).__name__})"
        raise _damaged(file, f"{reason}; it is not a file torch.save wrote, or it was cut short") from None


def _load_weights(target: nn.Module, folder: Path) -> None:
    """Load a checkpoint's ``*.safetensors`` into ``target``; every problem names the file."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise _damaged(folder, "holds no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        if f.stat().st_size == 0:
            raise _damaged(f, "is empty")
        try:
            part = load_file(f)
        except Exception as exc:  # SafetensorError (truncated, bad header) derives from Exception only
            raise _damaged(f, f"is not a readable safetensors file ({exc})") from None
        bad = non_finite_tensors(part)
        if bad:  # a model that would score NaN: refused here rather than trained on
            raise _damaged(f, f"holds NaN or infinite values in {bad[:3]}")
        weights.update(part)
    try:
        missing, unexpected = target.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise _damaged(folder, f"weights do not fit the model ({str(exc).splitlines()[0]})") from None
    # a tied lm_head is not stored separately; anything else missing is a broken checkpoint
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise _damaged(folder, f"checkpoint weights do not match ({missing[:3]}, {unexpected[:3]})")


def _load_into(target: Any, file: Path) -> None:
    """``target.load_state_dict(torch.load(file))`` (an optimizer or a scheduler)."""
    state = _torch_load(file)
    try:
        target.load_state_dict(state)
    except Exception as exc:  # a readable file of something else: wrong keys, sizes or types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _damaged(file, f"does not fit this run's {type(target).__name__} ({first})") from None


def load_checkpoint(
    run: Run,
    path: Path,
    model: ZRewardModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra_models: Mapping[str, ZRewardModel] | None = None,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler, extra models and this process's RNG state from ``path``
    (before ``accelerate.prepare``). Returns the trainer state (with ``step``).

    Raises:
        InvalidModelError: naming the damaged file (truncated or empty safetensors, weights with NaN,
            unreadable ``.pt`` files, invalid ``trainer_state.json``).

    A missing RNG file, or a checkpoint written by another number of processes, only gives a warning:
    the run continues, but draws from the global random generators differ from an uninterrupted run.
    """
    warn = logger.warning
    state = read_trainer_state(path)
    _load_weights(model, path / MODEL_DIR)
    for name, extra in (extra_models or {}).items():
        _load_weights(extra, path / name)
    _load_into(optimizer, path / "optimizer.pt")
    _load_into(scheduler, path / "scheduler.pt")
    rng_file = path / f"rng_state_rank{run.rank}.pt"
    consequence = (
        "draws from the global random generators after resume (anything not seeded per step) will "
        "differ from an uninterrupted run"
    )
    if state.get("world_size") != run.world_size:
        if run.is_main:
            warn(
                f"checkpoint {path} was written by {state.get('world_size')} process(es), this run has "
                f"{run.world_size}: RNG states are not restored; {consequence}"
            )
    elif not rng_file.is_file():
        warn(f"checkpoint {path} has no RNG state ({rng_file.name}); {consequence}")
    else:
        rng = _torch_load(rng_file)
        try:
            _set_rng_state(rng)
        except Exception as exc:  # readable, but not an RNG state this code wrote
            raise _damaged(rng_file, f"is not an RNG state ({type(exc).__name__})") from None
    return state


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _read_metrics_file(path: Path, warn: Warn) -> list[tuple[str, dict[str, Any]]]:
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


def grad_norm_and_clip(run: Run, wrapped: nn.Module, max_norm: float) -> float:
    """Global gradient norm before clipping (clipped to ``max_norm`` when > 0)."""
    limit = max_norm if max_norm > 0 else float("inf")
    return float(run.accelerator.clip_grad_norm_(wrapped.parameters(), limit))


# --------------------------------------------------------------------------------------------------
# The loop's plumbing
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainLoop:
    """What every trainer's loop does around its own loss: the data order, AdamW and its schedule,
    resume, the ``accelerate``-prepared model, one optimizer update, the metrics row, checkpoints, and
    the final model. A trainer reads as::

        run = start_run(cfg)
        if run.already_trained:                         # output_dir's run is at max_steps already
            return run.already_trained_result()
        ...                                             # model, data
        loop = TrainLoop.start(run, model, processor, len(data), total_updates=cfg.max_steps,
                               trained_dimensions=data.trained_dimensions)
        with loop.progress() as bar:                    # Ctrl-C -> TrainingInterrupted
            while loop.step < cfg.max_steps:
                batch = data.batch(run.local(loop.sampler.next_batch()))
                loss = ...                              # the method
                grad_norm, lr = loop.update(loss)
                loop.step += 1
                if loop.log_due:
                    loop.log({...}, bar, "loss")
                loop.end_step(bar)
        return loop.finish(dims, reasoning=False)
    """

    run: Run
    model: ZRewardModel
    processor: ZRewardProcessor
    sampler: EpochSampler
    optimizer: torch.optim.Optimizer
    scheduler: Any
    wrapped: nn.Module
    extra_models: Mapping[str, ZRewardModel]
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    last_checkpoint: Path | None = None  # the newest checkpoint this run loaded or wrote (for errors)
    skipped_items: int = 0  # records left out because their image does not decode
    # the rubric dimensions the data trains (what the saved models' training record names)
    trained_dimensions: list[str] = field(default_factory=list)
    start_step: int = 0  # the step this run started (or resumed) at

    @classmethod
    def start(
        cls,
        run: Run,
        model: ZRewardModel,
        processor: ZRewardProcessor,
        num_items: int,
        total_updates: int,
        extra_models: Mapping[str, ZRewardModel] | None = None,
        images: ImageCache | None = None,
        trained_dimensions: Sequence[str] = (),
    ) -> TrainLoop:
        """Build the sampler, optimizer and schedule; restore them (and ``extra_models``, e.g. GDSO's
        π_ref) from ``run.resume_from``; wrap the model with ``accelerate.prepare``.

        ``images`` is the data view's :class:`~.data.ImageCache`: the records it skipped (undecodable
        images) are logged here, once per run, and counted in every metrics row and the result.
        ``trained_dimensions`` (the data view's ``trained_dimensions``) go into the training record of
        every saved model (:func:`~.run_rules.training_record`).
        """
        cfg = run.config
        skipped = len(images.skipped) if images is not None else 0
        if skipped and run.is_main:
            logger.warning(images.describe_skipped())
        extra_models = dict(extra_models or {})
        sampler = EpochSampler(num_items, cfg.batch_size, cfg.seed)
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg, total_updates=total_updates)
        step = 0
        if run.resume_from is not None:
            state = load_checkpoint(run, run.resume_from, model, optimizer, scheduler, extra_models)
            step = state["step"]
            try:
                sampler.load_state_dict(state["sampler"])
            except (KeyError, TypeError, ValueError):
                raise _damaged(
                    run.resume_from / TRAINER_STATE, "holds no valid data-order position"
                ) from None
        model.train()
        wrapped, optimizer = run.accelerator.prepare(TrainingForward(model, processor), optimizer)
        return cls(
            run, model, processor, sampler, optimizer, scheduler, wrapped, extra_models, step,
            last_checkpoint=run.resume_from, skipped_items=skipped,
            trained_dimensions=list(trained_dimensions), start_step=step,
        )  # fmt: skip

    @contextlib.contextmanager
    def progress(self) -> Iterator[Any]:
        """``with loop.progress() as bar:`` around the loop: the bar (:meth:`Run.progress`), and Ctrl-C
        turned into :class:`~.run_rules.TrainingInterrupted`, whose message names the step reached, the
        checkpoint kept and how to resume. Nothing is saved on the way out: the interrupted step may be
        half done (its weights half updated)."""
        cfg = self.run.config
        with self.run.progress(cfg.max_steps, self.step) as bar:
            try:
                yield bar
            except TrainingInterrupted:
                raise
            except KeyboardInterrupt:
                raise self.interrupted() from None

    def interrupted(self) -> TrainingInterrupted:
        """The Ctrl-C error at this step: the checkpoint named is the one ``resume=auto`` would take
        (``checkpoints/latest`` as on disk, which a save cut short by the interrupt leaves consistent)."""
        import dataclasses

        cfg = self.run.config
        try:
            kept = find_resume_checkpoint(dataclasses.replace(cfg, resume="auto"), _no_warning)
        except ZRewardInputError:
            kept = None
        in_output_dir = kept is not None
        if kept is None and cfg.resume not in ("auto", "never"):
            kept = Path(cfg.resume)  # nothing saved here yet: the same command loads that one again
        step = None
        if kept is not None:
            try:
                step = read_trainer_state(kept)["step"]
            except InvalidModelError:  # damaged: the message still names it, by its folder's step
                step = checkpoint_step(kept)
        message = interrupted_message(cfg, self.step, kept, step, in_output_dir=in_output_dir)
        return TrainingInterrupted(message, self.run.is_main)

    def set_training_record(self, metrics: Mapping[str, float] | None = None) -> None:
        """Write what the weights were trained on into ``model.config.training`` (saved with them)."""
        from zreward_deploy.config import check_training_record

        record = training_record(self.run.config, self.trained_dimensions, self.step, metrics)
        self.model.config.training = check_training_record(record)

    def update(self, loss: torch.Tensor) -> tuple[float, float]:
        """Backward, clip, one optimizer and schedule step. Returns (grad norm before clipping, the lr
        this update used).

        Raises:
            NonFiniteLossError: the loss (on any process) or the global gradient norm is NaN or infinite.
                The optimizer and the schedule are not stepped, so the weights keep their last finite
                values; nothing is saved after that (the trainers stop at the error).
        """
        run = self.run
        # backward on every process even for a bad loss: DDP's gradient all-reduce is collective
        run.accelerator.backward(loss)
        grad_norm = grad_norm_and_clip(run, self.wrapped, run.config.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        loss_ok = bool(torch.isfinite(loss.detach()).all())
        # the gradient norm is global already; the loss is each process's own, so every process must
        # learn whether any loss was bad, or one would stop while the others wait in the next all-reduce
        any_bad_loss = not loss_ok if run.world_size == 1 else float(run.global_count(float(not loss_ok))) > 0
        if any_bad_loss or not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            if not loss_ok:
                what = f"the loss is {float(loss.detach().float().sum())}"
            elif any_bad_loss:
                what = "the loss is NaN or infinite on another process"
            else:
                what = f"the gradient norm is {grad_norm} (the loss is finite)"
            raise self.stop_error(self.step + 1, f"{what}; the update was not applied")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, lr

    def stop_error(self, step: int, what: str) -> NonFiniteLossError:
        """The error that stops the run at ``step``: ``what`` happened, the last good checkpoint, and how
        to go on."""
        if self.last_checkpoint is not None:
            where = (
                f"the last good checkpoint is {self.last_checkpoint}: run again with the same output_dir "
                "(resume=auto) to continue from it, or with resume=never to start over"
            )
        else:
            where = "no checkpoint was saved yet: fix the cause and start again"
        return NonFiniteLossError(
            self.run.config.method,
            f"step {step}: {what}; nothing from this step was saved; {where} (a lower learning_rate, "
            "max_grad_norm > 0 and finite input weights are the usual fixes)",
        )

    def _finite_weights(self, what: str) -> dict[str, torch.Tensor]:
        """The model's full state dict, after checking (on every process together) that it is finite."""
        run = self.run
        weights = unwrapped_state_dict(run, self.wrapped)
        bad = non_finite_tensors(weights)
        any_bad = bool(bad) if run.world_size == 1 else float(run.global_count(float(bool(bad)))) > 0
        if any_bad:
            names = f" ({bad[:3]})" if bad else " (on another process)"
            raise self.stop_error(
                self.step, f"the weights hold NaN or infinite values{names}; refusing to save the {what}"
            )
        return weights

    @property
    def log_due(self) -> bool:
        cfg = self.run.config
        return self.step % cfg.log_every == 0 or self.step == cfg.max_steps

    @property
    def eval_due(self) -> bool:
        every = self.run.config.eval_every
        return bool(every) and self.step % every == 0

    def log(self, row: Mapping[str, Any], bar: Any, *postfix: str) -> None:
        """Write ``row`` to metrics.jsonl and the history; show the ``postfix`` keys on the bar. Rows
        of a run that skipped undecodable items carry ``skipped_items``."""
        if self.skipped_items:
            row = {**row, "skipped_items": self.skipped_items}
        self.run.metrics.log(self.step, row)
        self.history.append({"step": self.step, **row})
        bar.set_postfix({k: f"{row[k]:.4f}" for k in postfix})

    def end_step(self, bar: Any) -> None:
        """Advance the bar; write a checkpoint every ``save_every`` steps and after the last one."""
        bar.update(1)
        cfg = self.run.config
        if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.max_steps:
            weights = self._finite_weights("checkpoint")
            self.set_training_record()
            self.last_checkpoint = save_checkpoint(
                self.run,
                self.step,
                self.wrapped,
                self.model,
                self.processor,
                self.optimizer,
                self.scheduler,
                {"sampler": self.sampler.state_dict()},
                self.extra_models,
                weights=weights,
            )

    def finish(
        self, dims: list[str], reasoning: bool, reasoning_kwargs: dict[str, Any] | None = None
    ) -> TrainResult:
        """Evaluate the final weights on ``eval_split`` when ``eval_at_end`` (after reasoning with
        ``reasoning``), save them to ``output_dir/model`` (atomically) with their training record (the
        final metrics included), close the logs."""
        run = self.run
        weights = self._finite_weights("final model")
        model_dir = run.output_dir / MODEL_DIR
        final_eval = None
        if run.config.eval_at_end:
            final_eval = evaluate_during_training(
                run, self.model, self.processor, dims, reasoning, reasoning_kwargs, prefix=""
            )
            if run.is_main:
                run.metrics.log(self.step, {f"final_eval/{k}": v for k, v in final_eval.items()})
        if run.is_main:
            self.set_training_record(final_eval)
            save_model_dir(self.model, self.processor, model_dir, state_dict=weights)
        run.barrier()
        run.metrics.close()
        return TrainResult(
            run.output_dir,
            model_dir,
            self.step,
            self.history,
            final_eval or None,
            run.is_main,
            skipped_items=self.skipped_items,
            start_step=self.start_step,
        )


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


# --------------------------------------------------------------------------------------------------
# Evaluation during / after training
# --------------------------------------------------------------------------------------------------

REPORTED_METRICS = ("hpa", "margin_hpa", "plcc", "srcc")


def evaluate_scorer(scorer: Any, records: Sequence[Any], batch_size: int = 32) -> dict[str, float]:
    """HPA, margin-HPA, PLCC and SRCC (pooled over the labelled dimensions) of a scorer on records."""
    from zreward_deploy.evaluation import evaluate

    ev = evaluate(scorer, records, batch_size=batch_size)
    return {k: float(ev.metrics[k]) for k in REPORTED_METRICS}


def eval_records(cfg: TrainConfig, model: ZRewardModel, dims: Sequence[str]) -> list[Any]:
    """``cfg.eval_split``'s records that carry a label in ``dims``, their labels limited to ``dims``
    (evaluate what was trained)."""
    import dataclasses

    from zreward_deploy.data import load_split

    c = model.config
    records = load_split(cfg.data, cfg.eval_split, scale=c.get_score_scale(), rubric=c.get_rubric())
    return [
        dataclasses.replace(
            r,
            scores={k: v for k, v in r.scores.items() if k in dims},
            annotations={k: v for k, v in r.annotations.items() if k in dims},
        )
        for r in records
        if any(d in r.dimensions for d in dims)
    ]


def evaluate_during_training(
    run: Run,
    model: ZRewardModel,
    processor: ZRewardProcessor,
    dims: Sequence[str],
    reasoning: bool,
    reasoning_kwargs: Mapping[str, Any] | None = None,
    prefix: str = "eval/",
) -> dict[str, float]:
    """Metrics of the model on ``eval_split`` (main process; the others wait and get ``{}``): scored
    in one pass, or after reasoning (:class:`~zreward_deploy.scoring.ReasoningScorer`, seeded by ``cfg.seed``)."""
    out: dict[str, float] = {}
    if run.is_main:
        was_training = model.training
        if reasoning:
            from zreward_deploy.scoring import ReasoningScorer

            kwargs = dict(reasoning_kwargs or {})
            scorer: Any = ReasoningScorer(model, processor, seed=run.config.seed, **kwargs)
        else:
            from zreward_deploy.scoring import Scorer

            scorer = Scorer(model, processor)
        metrics = evaluate_scorer(scorer, eval_records(run.config, model, dims))
        out = {f"{prefix}{k}": v for k, v in metrics.items()}
        model.train(was_training)
    run.barrier()
    return out
