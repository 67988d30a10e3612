"""SFT: cross-entropy on the score token with no reasoning (docs/method.md §5's SFT baseline, docs/design.md §6).

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
from typing import ClassVar

import torch

from zreward_deploy.modeling import ZRewardModel, ZRewardOutput
from zreward_deploy.processing import ZRewardProcessor

from .common import (
    Run,
    TrainLoop,
    TrainResult,
    evaluate_during_training,
    load_model,
    start_run,
)
from .config import LABEL_SOURCES, ConfigError, TrainConfig, require_one_of
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
        require_one_of("label_source", self.label_source, LABEL_SOURCES)
        if not self.data:
            raise ConfigError("data", "is required (a dataset folder)")


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
    if run.already_trained:
        return run.already_trained_result()
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
    loop = TrainLoop.start(
        run, model, processor, len(data), total_updates=cfg.max_steps, images=data.images,
        trained_dimensions=data.trained_dimensions,
    )  # fmt: skip
    suffix_ids = [s.to(run.device) for s in processor.suffix_ids(data.dimensions)]

    with loop.progress() as bar:
        while loop.step < cfg.max_steps:
            started = time.perf_counter()
            global_batch = loop.sampler.next_batch()
            batch = data.batch(run.local(global_batch))
            out = loop.wrapped(
                "student",
                pixel_values=batch.pixel_values.to(run.device),
                input_ids=batch.input_ids.to(run.device),
                attention_mask=batch.attention_mask.to(run.device),
                suffix_ids=suffix_ids,
            )
            loss_sum, extra = loss_fn(out, batch)
            n_global = run.global_count(batch.mask.sum())
            loss = loss_sum * run.world_size / n_global.clamp(min=1)
            grad_norm, lr = loop.update(loss)
            loop.step += 1

            if loop.log_due:
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
                if loop.eval_due:
                    row.update(
                        evaluate_during_training(run, model, processor, data.dimensions, reasoning=False)
                    )
                loop.log(row, bar, "loss")
            loop.end_step(bar)
    return loop.finish(data.dimensions, reasoning=False)
