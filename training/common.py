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
extra models (GDSO's reference policy). It is written to a temporary folder and renamed into place with
``os.replace``, so a crash leaves either the old or the new checkpoint, never half of one; ``latest``
names the newest. ``.pt`` files are loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zreward_deploy.errors import ZRewardInputError
from zreward_deploy.modeling import ZRewardModel
from zreward_deploy.processing import ZRewardProcessor

from .config import ConfigError, TrainConfig

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
MODEL_DIR = "model"
METRICS_FILE = "metrics.jsonl"


# --------------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------------


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (same on every process and every run, unlike
    ``hash``): e.g. ``derive_seed(cfg.seed, "rollout", step, pair_index)``."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


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
        from tqdm.auto import tqdm

        show = self.config.progress and self.is_main and sys.stderr.isatty()
        return tqdm(total=total, initial=initial, disable=not show, desc=self.config.method, unit="step")


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
    """Set threads, create the accelerator, check the batch split, prepare ``output_dir`` (writing
    ``config.yaml``) and find the checkpoint to resume from."""
    from accelerate import Accelerator

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # cpu=True unless a GPU is visible: one CPU process, or gloo across processes started by torchrun or
    # `accelerate launch --multi_gpu` (docs/training.md §5)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    check_distributed_support(cfg.method, str(accelerator.distributed_type))
    if cfg.batch_size % accelerator.num_processes:
        raise ConfigError(
            "batch_size",
            f"the global batch of {cfg.batch_size} does not split evenly over {accelerator.num_processes} "
            "processes",
        )
    out = Path(cfg.output_dir)
    resume_from = find_resume_checkpoint(cfg)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(out / "config.yaml", cfg.to_yaml())
        if cfg.resume == "never":
            # a fresh run must not leave `latest` naming an older run's checkpoint until its first save
            (out / CHECKPOINT_DIR / LATEST_FILE).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    step = read_trainer_state(resume_from)["step"] if resume_from else 0
    metrics = MetricsWriter(
        out, enabled=accelerator.is_main_process, resume_step=step, tensorboard=cfg.tensorboard
    )
    return Run(cfg, accelerator, out, metrics, resume_from)


def find_resume_checkpoint(cfg: TrainConfig) -> Path | None:
    """The checkpoint ``cfg.resume`` asks for: the latest one in ``output_dir`` ('auto', if any), none
    ('never'), or an explicit folder (which must hold a checkpoint)."""
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        latest = Path(cfg.output_dir) / CHECKPOINT_DIR / LATEST_FILE
        if not latest.is_file():
            return None
        path = latest.parent / latest.read_text().strip()
    else:
        path = Path(cfg.resume)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError("resume", f"{path} is not a checkpoint folder (no trainer_state.json)")
    return path


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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


def save_model_dir(
    model: ZRewardModel,
    processor: ZRewardProcessor,
    path: Path,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """``save_pretrained`` model + processor into ``path`` (replaced atomically if it exists)."""
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, state_dict=dict(state_dict) if state_dict is not None else None)
    processor.save_pretrained(tmp)
    _replace_dir(tmp, path)


def _replace_dir(tmp: Path, final: Path) -> None:
    # os.replace cannot replace a non-empty folder: move the old one aside first, then delete it.
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


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
) -> Path:
    """Write a resumable checkpoint for ``step`` atomically; every process must call it.

    Args:
        wrapped: the prepared :class:`TrainingForward` (its weights are gathered from it).
        model, processor: the inner model (for its config) and its processor.
        state: JSON-able trainer state (``step`` is added; include the sampler's ``state_dict``).
        extra_models: further models to keep (name -> model), e.g. GDSO's π_ref.
    """
    root = run.output_dir / CHECKPOINT_DIR
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    weights = unwrapped_state_dict(run, wrapped)  # collective under FSDP: every process calls it
    if run.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    run.barrier()
    torch.save(_rng_state(), tmp / f"rng_state_rank{run.rank}.pt")
    if run.is_main:
        model.save_pretrained(tmp / MODEL_DIR, state_dict=weights)
        processor.save_pretrained(tmp / MODEL_DIR)
        for name, extra in (extra_models or {}).items():
            extra.save_pretrained(tmp / name)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        meta = {"step": step, "world_size": run.world_size, **state}
        (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=2) + "\n")
    run.barrier()
    if run.is_main:
        _replace_dir(tmp, final)
        _atomic_write_text(root / LATEST_FILE, final.name)
        kept = sorted(p for p in root.glob("step_*") if p.is_dir())
        for old in kept[: -run.config.keep_checkpoints]:
            shutil.rmtree(old)
    run.barrier()
    return final


def read_trainer_state(path: Path) -> dict[str, Any]:
    return json.loads((path / "trainer_state.json").read_text())


def load_checkpoint(
    run: Run,
    path: Path,
    model: ZRewardModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra_models: Mapping[str, ZRewardModel] | None = None,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler, extra models and this process's RNG state from ``path``
    (before ``accelerate.prepare``). Returns the trainer state (with ``step``)."""
    from safetensors.torch import load_file

    def load_weights(target: nn.Module, folder: Path) -> None:
        weights = {}
        for f in sorted(folder.glob("*.safetensors")):
            weights.update(load_file(f))
        missing, unexpected = target.load_state_dict(weights, strict=False)
        # a tied lm_head is not stored separately; anything else missing is a broken checkpoint
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if missing or unexpected:
            raise ZRewardInputError(
                str(folder), f"checkpoint weights do not match ({missing[:3]}, {unexpected[:3]})"
            )

    state = read_trainer_state(path)
    load_weights(model, path / MODEL_DIR)
    for name, extra in (extra_models or {}).items():
        load_weights(extra, path / name)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng_state_rank{run.rank}.pt"
    if state.get("world_size") == run.world_size and rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return state


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


class MetricsWriter:
    """``metrics.jsonl`` (one JSON object per logged step) and optional TensorBoard scalars, on the main
    process only. On resume, lines after the resumed step are dropped, so a resumed run's log reads like
    an uninterrupted one."""

    def __init__(self, output_dir: Path, enabled: bool, resume_step: int = 0, tensorboard: bool = False):
        self.enabled = enabled
        self.path = output_dir / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        kept = []
        if resume_step and self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip() and json.loads(line).get("step", 0) <= resume_step:
                    kept.append(line + "\n")
        _atomic_write_text(self.path, "".join(kept))
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
    """The rows of ``output_dir/metrics.jsonl``."""
    path = Path(output_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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

        loop = TrainLoop.start(run, model, processor, len(data), total_updates=cfg.max_steps)
        with run.progress(cfg.max_steps, loop.step) as bar:
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

    @classmethod
    def start(
        cls,
        run: Run,
        model: ZRewardModel,
        processor: ZRewardProcessor,
        num_items: int,
        total_updates: int,
        extra_models: Mapping[str, ZRewardModel] | None = None,
    ) -> TrainLoop:
        """Build the sampler, optimizer and schedule; restore them (and ``extra_models``, e.g. GDSO's
        π_ref) from ``run.resume_from``; wrap the model with ``accelerate.prepare``."""
        cfg = run.config
        extra_models = dict(extra_models or {})
        sampler = EpochSampler(num_items, cfg.batch_size, cfg.seed)
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg, total_updates=total_updates)
        step = 0
        if run.resume_from is not None:
            state = load_checkpoint(run, run.resume_from, model, optimizer, scheduler, extra_models)
            step = state["step"]
            sampler.load_state_dict(state["sampler"])
        model.train()
        wrapped, optimizer = run.accelerator.prepare(TrainingForward(model, processor), optimizer)
        return cls(run, model, processor, sampler, optimizer, scheduler, wrapped, extra_models, step)

    def update(self, loss: torch.Tensor) -> tuple[float, float]:
        """Backward, clip, one optimizer and schedule step. Returns (grad norm before clipping, the lr
        this update used)."""
        self.run.accelerator.backward(loss)
        grad_norm = grad_norm_and_clip(self.run, self.wrapped, self.run.config.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, lr

    @property
    def log_due(self) -> bool:
        cfg = self.run.config
        return self.step % cfg.log_every == 0 or self.step == cfg.max_steps

    @property
    def eval_due(self) -> bool:
        every = self.run.config.eval_every
        return bool(every) and self.step % every == 0

    def log(self, row: Mapping[str, Any], bar: Any, *postfix: str) -> None:
        """Write ``row`` to metrics.jsonl and the history; show the ``postfix`` keys on the bar."""
        self.run.metrics.log(self.step, row)
        self.history.append({"step": self.step, **row})
        bar.set_postfix({k: f"{row[k]:.4f}" for k in postfix})

    def end_step(self, bar: Any) -> None:
        """Advance the bar; write a checkpoint every ``save_every`` steps and after the last one."""
        bar.update(1)
        cfg = self.run.config
        if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.max_steps:
            save_checkpoint(
                self.run,
                self.step,
                self.wrapped,
                self.model,
                self.processor,
                self.optimizer,
                self.scheduler,
                {"sampler": self.sampler.state_dict()},
                self.extra_models,
            )

    def finish(
        self, dims: list[str], reasoning: bool, reasoning_kwargs: dict[str, Any] | None = None
    ) -> TrainResult:
        """Save the final model to ``output_dir/model`` (atomically), evaluate it on ``eval_split``
        when ``eval_at_end`` (after reasoning with ``reasoning``), close the logs."""
        run = self.run
        weights = unwrapped_state_dict(run, self.wrapped)
        model_dir = run.output_dir / MODEL_DIR
        if run.is_main:
            save_model_dir(self.model, self.processor, model_dir, state_dict=weights)
        run.barrier()
        final_eval = None
        if run.config.eval_at_end:
            final_eval = evaluate_during_training(
                run, self.model, self.processor, dims, reasoning, reasoning_kwargs, prefix=""
            )
            if run.is_main:
                run.metrics.log(self.step, {f"final_eval/{k}": v for k, v in final_eval.items()})
        run.metrics.close()
        return TrainResult(
            run.output_dir, model_dir, self.step, self.history, final_eval or None, run.is_main
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
    in one pass, or after reasoning (:class:`~.rollouts.ReasoningScorer`, seeded by ``cfg.seed``)."""
    out: dict[str, float] = {}
    if run.is_main:
        was_training = model.training
        if reasoning:
            from .rollouts import ReasoningScorer

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
