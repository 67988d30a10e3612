"""SFT: cross-entropy on the score token with no reasoning (PAPER.md §5's SFT baseline, DESIGN.md §6).

The model answers in the student layout: every dimension in one pass
(:meth:`~zreward_deploy.modeling.ZRewardModel.forward`), each read at its own answer position. The loss
is the soft cross-entropy against ``ScoreScale.soft_target(ŝ)`` (two-hot for a label between two score
values, so its expectation is ŝ), averaged over the labelled (item, dimension) entries of the global
batch; unlabelled entries are masked. The same trainer makes the SFT *student* and the SFT *teacher
baseline* (the paper's "SFT" rows: the teacher-sized model fine-tuned without reasoning); only
``model`` differs.

:func:`run_student_loop` is the loop RISD shares (a different target and loss, same layout).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from zreward_deploy.modeling import ZRewardModel, ZRewardOutput
from zreward_deploy.processing import ZRewardProcessor

from .common import (
    MODEL_DIR,
    EpochSampler,
    Run,
    TrainingForward,
    build_optimizer,
    build_scheduler,
    evaluate_scorer,
    grad_norm_and_clip,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_model_dir,
    start_run,
)
from .config import TrainConfig
from .data import StudentBatch, StudentData, resolve_dimensions
from .losses import soft_cross_entropy_loss

# (out, batch) -> (sum of the per-entry loss over this process's labelled entries, scalar logs)
StudentLoss = Callable[[ZRewardOutput, StudentBatch], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class SFTConfig(TrainConfig):
    """SFT: soft CE on the score token, no reasoning (student layout, all dimensions in one pass)."""

    method: ClassVar[str] = "sft"

    label_source: str = field(
        default="scores",
        metadata={
            "help": "which human score is the label: 'scores' (the aggregated training label), "
            "'annotations' (trimmed mean of the raw annotations) or 'auto' (annotations where present)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from .config import ConfigError

        if self.label_source not in ("scores", "annotations", "auto"):
            raise ConfigError(
                "label_source", f"must be scores, annotations or auto, got {self.label_source!r}"
            )
        if not self.data:
            raise ConfigError("data", "is required (a dataset folder)")


@dataclass
class TrainResult:
    """What a trainer returns: where things are and what was logged."""

    output_dir: Path
    model_dir: Path
    steps: int
    history: list[dict[str, Any]]
    final_eval: dict[str, float] | None = None


def _sft_loss(out: ZRewardOutput, batch: StudentBatch) -> tuple[torch.Tensor, dict[str, float]]:
    mask = batch.mask.to(out.logprobs.device)
    n = mask.sum()
    ce_sum = soft_cross_entropy_loss(out.logprobs, batch.targets.to(out.logprobs.device), mask) * n
    with torch.no_grad():
        err = (out.mean.detach().cpu() - batch.labels).abs()[batch.mask]
    return ce_sum, {"mae": float(err.mean()) if err.numel() else 0.0}


def train_sft(cfg: SFTConfig) -> TrainResult:
    """Run SFT as configured; returns a :class:`TrainResult` (the model is in ``output_dir/model``)."""
    from zreward_deploy.data import load_split

    run = start_run(cfg)
    model, processor = load_model(cfg.model, seed=cfg.seed)
    config = model.config
    records = load_split(
        cfg.data, cfg.train_split, scale=config.get_score_scale(), rubric=config.get_rubric()
    )
    dims = resolve_dimensions(processor, records, cfg.dimensions)
    data = StudentData(records, processor, dims, label_source=cfg.label_source)
    return run_student_loop(run, model, processor, data, _sft_loss, loss_name="ce")


def run_student_loop(
    run: Run,
    model: ZRewardModel,
    processor: ZRewardProcessor,
    data: StudentData,
    loss_fn: StudentLoss,
    loss_name: str,
) -> TrainResult:
    """The student training loop (SFT and RISD): one-pass scoring of all dimensions, a masked loss
    averaged over the labelled entries of the *global* batch, AdamW, checkpoints, metrics.

    Per step: global batch of indices → this process's slice → forward → ``loss_fn`` gives the summed
    per-entry loss over the local labelled entries; dividing by the global count (times the number of
    processes, because DDP averages gradients) makes the update the global mean's gradient whatever the
    split.
    """
    cfg = run.config
    sampler = EpochSampler(len(data), cfg.batch_size, cfg.seed)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_updates=cfg.max_steps)
    step = 0
    if run.resume_from is not None:
        state = load_checkpoint(run, run.resume_from, model, optimizer, scheduler)
        step = state["step"]
        sampler.load_state_dict(state["sampler"])
    model.train()
    wrapped, optimizer = run.accelerator.prepare(TrainingForward(model, processor), optimizer)
    suffix_ids = [s.to(run.device) for s in processor.suffix_ids(data.dimensions)]
    history: list[dict[str, Any]] = []
    eval_records = None

    with run.progress(cfg.max_steps, step) as bar:
        while step < cfg.max_steps:
            started = time.perf_counter()
            global_batch = sampler.next_batch()
            batch = data.batch(run.local(global_batch))
            out = wrapped(
                "student",
                pixel_values=batch.pixel_values.to(run.device),
                input_ids=batch.input_ids.to(run.device),
                attention_mask=batch.attention_mask.to(run.device),
                suffix_ids=suffix_ids,
            )
            loss_sum, extra = loss_fn(out, batch)
            n_global = run.global_count(batch.mask.sum())
            loss = loss_sum * run.world_size / n_global.clamp(min=1)
            run.accelerator.backward(loss)
            grad_norm = grad_norm_and_clip(run, wrapped, cfg.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            if step % cfg.log_every == 0 or step == cfg.max_steps:
                logged = run.mean_over_processes({loss_name: float(loss.detach()), **extra})
                elapsed = time.perf_counter() - started
                row = {
                    **logged,
                    "loss": logged[loss_name],
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "entries": int(n_global),
                    "items_per_s": len(global_batch) / elapsed,
                }
                if cfg.eval_every and step % cfg.eval_every == 0:
                    eval_records = eval_records or _eval_records(cfg, model)
                    row.update(_student_eval(run, model, processor, eval_records, data.dimensions))
                run.metrics.log(step, row)
                history.append({"step": step, **row})
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            bar.update(1)
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
                save_checkpoint(
                    run,
                    step,
                    wrapped,
                    model,
                    processor,
                    optimizer,
                    scheduler,
                    {"sampler": sampler.state_dict()},
                )
    return finish_run(run, wrapped, model, processor, history, step, data.dimensions, reasoning=False)


def _eval_records(cfg: TrainConfig, model: ZRewardModel) -> list[Any]:
    from zreward_deploy.data import load_split

    c = model.config
    return load_split(cfg.data, cfg.eval_split, scale=c.get_score_scale(), rubric=c.get_rubric())


def _student_eval(
    run: Run, model: ZRewardModel, processor: ZRewardProcessor, records: list[Any], dims: list[str]
) -> dict[str, float]:
    """Evaluate on the main process (the others wait); ``eval/...`` metrics, pooled over ``dims``."""
    from zreward_deploy.scoring import Scorer

    out: dict[str, float] = {}
    if run.is_main:
        kept = [r for r in records if any(d in r.dimensions for d in dims)]
        was_training = model.training
        scorer = Scorer(model, processor)
        restricted = _restrict(kept, dims)
        out = {f"eval/{k}": v for k, v in evaluate_scorer(scorer, restricted).items()}
        model.train(was_training)
    run.barrier()
    return out


def _restrict(records: list[Any], dims: list[str]) -> list[Any]:
    """Records with their scores and annotations limited to ``dims`` (evaluate what was trained)."""
    import dataclasses

    return [
        dataclasses.replace(
            r,
            scores={k: v for k, v in r.scores.items() if k in dims},
            annotations={k: v for k, v in r.annotations.items() if k in dims},
        )
        for r in records
    ]


def finish_run(
    run: Run,
    wrapped: torch.nn.Module,
    model: ZRewardModel,
    processor: ZRewardProcessor,
    history: list[dict[str, Any]],
    step: int,
    dims: list[str],
    reasoning: bool,
    reasoning_kwargs: dict[str, Any] | None = None,
) -> TrainResult:
    """Save the final model to ``output_dir/model`` (atomically), optionally evaluate, close logs."""
    from .common import unwrapped_state_dict

    cfg = run.config
    weights = unwrapped_state_dict(run, wrapped)
    model_dir = run.output_dir / MODEL_DIR
    if run.is_main:
        save_model_dir(model, processor, model_dir, state_dict=weights)
    run.barrier()
    final_eval = None
    if cfg.eval_at_end:
        records = _restrict(_eval_records(cfg, model), dims)
        if run.is_main:
            if reasoning:
                from .rollouts import ReasoningScorer

                scorer: Any = ReasoningScorer(model, processor, seed=cfg.seed, **(reasoning_kwargs or {}))
            else:
                from zreward_deploy.scoring import Scorer

                scorer = Scorer(model, processor)
            final_eval = evaluate_scorer(scorer, records)
            run.metrics.log(step, {f"final_eval/{k}": v for k, v in final_eval.items()})
        run.barrier()
    run.metrics.close()
    return TrainResult(run.output_dir, model_dir, step, history, final_eval)
