"""The loop's plumbing: what every trainer's loop does around its own loss (:class:`TrainLoop`): the data
order (:class:`EpochSampler`), AdamW and its schedule, resume, the ``accelerate``-prepared model, one
optimizer update, the metrics row, checkpoints, and the final model.

What a run refuses (docs/training.md §4): a non-finite loss or gradient norm stops the run
(:class:`~.config.NonFiniteLossError`) before the optimizer applies the update; non-finite weights are
never saved.

One optimizer update is ``gradient_accumulation_steps`` micro-batches (:meth:`TrainLoop.micro_batches`),
each a forward and a :meth:`TrainLoop.backward`, then :meth:`TrainLoop.update`: the trainers weight each
micro-batch's loss by its share of the whole batch's normaliser, so the summed gradients are the whole
batch's (docs/training.md, "Real model sizes").
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zreward_deploy.errors import InvalidModelError, ZRewardInputError
from zreward_deploy.generation import derive_seed
from zreward_deploy.modeling import ZRewardModel, save_model_dir
from zreward_deploy.processing import ZRewardProcessor

from .checkpoints import (
    MODEL_DIR,
    TRAINER_STATE,
    checkpoint_step,
    damaged_checkpoint,
    find_resume_checkpoint,
    load_checkpoint,
    no_warning,
    non_finite_tensors,
    read_trainer_state,
    save_checkpoint,
    unwrapped_state_dict,
)
from .config import ConfigError, NonFiniteLossError, TrainConfig
from .data import ImageCache
from .evaluate import evaluate_during_training
from .lora import adapter_state_dict, apply_lora, merged_state_dict
from .models import TrainingForward, backbone_autocast
from .run import Run, TrainResult
from .run_rules import TrainingInterrupted, interrupted_message, training_record

# the trainers' logger (`zreward train` prints its warnings)
logger = logging.getLogger("zreward_deploy.training")


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


def check_batch_split(run: Run, name: str, size: int) -> None:
    """Raise :class:`ConfigError` naming the field ``name`` unless a global batch of ``size`` splits
    into equal shares per process, each into ``gradient_accumulation_steps`` equal micro-batches."""
    cfg = run.config
    if size % run.world_size:
        raise ConfigError(
            name, f"the global batch of {size} does not split evenly over {run.world_size} processes"
        )
    per_process = size // run.world_size
    if per_process % cfg.gradient_accumulation_steps:
        raise ConfigError(
            "gradient_accumulation_steps",
            f"{cfg.gradient_accumulation_steps} does not divide the {per_process} items each of "
            f"{run.world_size} processes takes from {name} {size}",
        )


# --------------------------------------------------------------------------------------------------
# Optimizer and schedule
# --------------------------------------------------------------------------------------------------


def apply_memory_options(model: ZRewardModel, cfg: TrainConfig) -> None:
    """``lora_r > 0``: LoRA adapters on the language model, everything else frozen (:mod:`.lora`);
    ``freeze_vision``: the vision tower stops requiring gradients (so :func:`build_optimizer` leaves it
    out); ``gradient_checkpointing``: non-reentrant activation checkpointing in the towers' layers."""
    if cfg.lora_r:
        apply_lora(model, cfg)
    if cfg.freeze_vision:
        model.vision_tower.requires_grad_(False)
    if cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name; the old one warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


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


def grad_norm_and_clip(run: Run, wrapped: nn.Module, max_norm: float) -> float:
    """Global gradient norm before clipping (clipped to ``max_norm`` when > 0)."""
    limit = max_norm if max_norm > 0 else float("inf")
    return float(run.accelerator.clip_grad_norm_(wrapped.parameters(), limit))


# --------------------------------------------------------------------------------------------------
# The loop
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
    # further data streams drawn every step (e.g. SFT's judgements beside its items), saved and resumed
    # with the main sampler
    extra_samplers: dict[str, EpochSampler] = field(default_factory=dict)
    _bad_loss: float | None = None  # the first non-finite micro-batch loss since the last update

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
        batch_size: int | None = None,
        extra_samplers: Mapping[str, EpochSampler] | None = None,
    ) -> TrainLoop:
        """Build the sampler, optimizer and schedule; restore them (and ``extra_models``, e.g. GDSO's
        π_ref) from ``run.resume_from``; wrap the model with ``accelerate.prepare``.

        ``images`` is the data view's :class:`~.data.ImageCache`: the records it skipped (undecodable
        images) are logged here, once per run, and counted in every metrics row and the result.
        ``trained_dimensions`` (the data view's ``trained_dimensions``) go into the training record of
        every saved model (:func:`~.run_rules.training_record`). ``batch_size`` (default
        ``cfg.batch_size``) is the main sampler's global batch; ``extra_samplers`` are further streams
        the trainer draws from (their batches checked by the trainer, :func:`check_batch_split`),
        restored from the checkpoint.
        """
        cfg = run.config
        skipped = len(images.skipped) if images is not None else 0
        if skipped and run.is_main:
            logger.warning(images.describe_skipped())
        extra_models = dict(extra_models or {})
        extra_samplers = dict(extra_samplers or {})
        batch_size = cfg.batch_size if batch_size is None else batch_size
        check_batch_split(run, "batch_size", batch_size)
        if cfg.mixed_precision == "bf16" and run.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                "mixed_precision", "bf16 needs a GPU with bfloat16 support (Ampere or newer); use 'no'"
            )
        sampler = EpochSampler(num_items, batch_size, cfg.seed)
        apply_memory_options(model, cfg)
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg, total_updates=total_updates)
        step = 0
        if run.resume_from is not None:
            state = load_checkpoint(
                run.accelerator, run.resume_from, model, optimizer, scheduler, extra_models
            )
            step = state["step"]
            try:
                sampler.load_state_dict(state["sampler"])
                for name, extra in extra_samplers.items():
                    extra.load_state_dict(state["samplers"][name])
            except (KeyError, TypeError, ValueError):
                raise damaged_checkpoint(
                    run.resume_from / TRAINER_STATE, "holds no valid data-order position"
                ) from None
        model.train()
        forward = TrainingForward(model, processor, cfg.mixed_precision)
        wrapped, optimizer = run.accelerator.prepare(forward, optimizer)
        return cls(
            run, model, processor, sampler, optimizer, scheduler, wrapped, extra_models, step,
            last_checkpoint=run.resume_from, skipped_items=skipped,
            trained_dimensions=list(trained_dimensions), start_step=step, extra_samplers=extra_samplers,
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
            kept = find_resume_checkpoint(dataclasses.replace(cfg, resume="auto"), no_warning)
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
        self.processor.config.training = check_training_record(record)

    def micro_batches(self, size: int) -> Iterator[slice]:
        """This process's ``size`` rows (items, or pairs) as ``gradient_accumulation_steps`` contiguous
        slices of equal length, for one optimizer update: the caller runs a forward and :meth:`backward`
        on each. Under DDP every backward but the last skips the gradient all-reduce (``no_sync``), so the
        gradients summed locally are reduced once."""
        parts = self.micro_slices(size)
        for i, rows in enumerate(parts):
            last = i == len(parts) - 1
            sync = contextlib.nullcontext() if last else self.run.accelerator.no_sync(self.wrapped)
            with sync:
                yield rows

    def micro_slices(self, size: int) -> list[slice]:
        """The micro-batches of :meth:`micro_batches` as slices (for passes without gradients, e.g. a
        frozen model's log-probs computed per micro-batch ahead of the updates)."""
        k = self.run.config.gradient_accumulation_steps
        per = size // k
        return [slice(i * per, size if i == k - 1 else (i + 1) * per) for i in range(k)]

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss, its gradients added to the ones before; a NaN or infinite
        loss is remembered for :meth:`update` (which refuses the step), not raised here: every process must
        run the same backward passes, DDP's all-reduce being collective."""
        self.run.accelerator.backward(loss)
        if self._bad_loss is None and not bool(torch.isfinite(loss.detach()).all()):
            self._bad_loss = float(loss.detach().float().sum())

    def autocast(self, model: nn.Module | None = None) -> contextlib.AbstractContextManager[None]:
        """``mixed_precision`` for a pass outside the wrapped forward (rollout sampling, a frozen model):
        :func:`~.models.backbone_autocast` of ``model`` (default: the trained one)."""
        return backbone_autocast(self.model if model is None else model, self.run.config.mixed_precision)

    def update(self, loss: torch.Tensor | None = None) -> tuple[float, float]:
        """Clip, one optimizer and schedule step over the gradients of the :meth:`backward` calls since
        the last update (with ``loss``, its backward first: the one-micro-batch form). Returns (grad
        norm before clipping, the lr this update used).

        Raises:
            NonFiniteLossError: a loss (of any micro-batch, on any process) or the global gradient norm
                is NaN or infinite. The optimizer and the schedule are not stepped, so the weights keep
                their last finite values; nothing is saved after that (the trainers stop at the error).
        """
        run = self.run
        if loss is not None:
            # backward on every process even for a bad loss: DDP's gradient all-reduce is collective
            self.backward(loss)
        bad_loss, self._bad_loss = self._bad_loss, None
        grad_norm = grad_norm_and_clip(run, self.wrapped, run.config.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        loss_ok = bad_loss is None
        # the gradient norm is global already; the loss is each process's own, so every process must
        # learn whether any loss was bad, or one would stop while the others wait in the next all-reduce
        any_bad_loss = not loss_ok if run.world_size == 1 else float(run.global_count(float(not loss_ok))) > 0
        if any_bad_loss or not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            if not loss_ok:
                what = f"the loss is {bad_loss}"
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
        weights = unwrapped_state_dict(run.accelerator, self.wrapped)
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
            adapter = adapter_state_dict(weights) if cfg.lora_r else None
            weights = merged_state_dict(self.model, weights)
            self.set_training_record()
            self.last_checkpoint = save_checkpoint(
                self.run.accelerator,
                self.run.output_dir,
                self.step,
                self.wrapped,
                self.model,
                self.processor,
                self.optimizer,
                self.scheduler,
                self.sampler_states(),
                keep=cfg.keep_checkpoints,
                extra_models=self.extra_models,
                weights=weights,
                adapter=adapter,
            )

    def sampler_states(self) -> dict[str, Any]:
        """The data-order positions a checkpoint keeps: ``sampler`` and, with extra streams, ``samplers``."""
        state: dict[str, Any] = {"sampler": self.sampler.state_dict()}
        if self.extra_samplers:
            state["samplers"] = {name: x.state_dict() for name, x in self.extra_samplers.items()}
        return state

    def finish(
        self, dims: list[str], reasoning: bool, reasoning_kwargs: dict[str, Any] | None = None
    ) -> TrainResult:
        """Evaluate the final weights on ``eval_split`` when ``eval_at_end`` (after reasoning with
        ``reasoning``), save them to ``output_dir/model`` (atomically) with their training record (the
        final metrics included), close the logs."""
        run = self.run
        weights = merged_state_dict(self.model, self._finite_weights("final model"))
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
