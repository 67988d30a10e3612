"""The student training loop that SFT and RISD share (:func:`run_student_loop`): one-pass scoring of all
dimensions, a masked loss averaged over the labelled entries of the *global* batch, AdamW, checkpoints,
metrics. The trainers differ only in the data's targets and the loss (:data:`StudentLoss`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import torch

from zreward_deploy.modeling import ZRewardModel, ZRewardOutput
from zreward_deploy.processing import ZRewardProcessor

from .data import StudentBatch, StudentData
from .evaluate import evaluate_during_training
from .loop import TrainLoop
from .run import Run, TrainResult

# (out, batch) -> (sum of the per-entry loss over the batch's labelled entries, scalar logs, each a mean
# over those entries)
StudentLoss = Callable[[ZRewardOutput, StudentBatch], tuple[torch.Tensor, dict[str, float]]]


def micro_batch_loss(loss_sum: torch.Tensor, n_global: torch.Tensor, world_size: int) -> torch.Tensor:
    """One micro-batch's share of the step's loss: its summed per-entry loss divided by ``n_global``, the
    labelled entries of the whole global batch (not of the micro-batch: micro-batches hold different
    numbers of labelled entries, and a mean per micro-batch would weigh their entries unequally), times
    the number of processes because DDP averages gradients. The shares sum to the global mean."""
    return loss_sum * world_size / n_global.clamp(min=1)


def batch_rows(batch: StudentBatch, rows: slice) -> StudentBatch:
    """Rows ``rows`` of a student batch (a micro-batch; the padded width stays the batch's)."""
    return dataclasses.replace(
        batch,
        ids=batch.ids[rows],
        **{
            f: getattr(batch, f)[rows]
            for f in ("pixel_values", "input_ids", "attention_mask", "labels", "mask", "targets")
        },
    )


def entry_weighted(logs: Sequence[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Per-micro-batch logs (means over their labelled entries) as means over all of them: weighted by
    each micro-batch's number of labelled entries. One micro-batch: its logs as they are."""
    if len(logs) == 1:
        return dict(logs[0][0])
    total = sum(n for _, n in logs)
    return {k: sum(v[k] * n for v, n in logs) / max(total, 1) for k in logs[0][0]}


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

    Per step: global batch of indices → this process's slice → ``gradient_accumulation_steps``
    micro-batches, each a forward, ``loss_fn`` (the summed per-entry loss over its labelled entries) and a
    backward of :func:`micro_batch_loss`; dividing by the global count (times the number of processes,
    because DDP averages gradients) makes the update the global mean's gradient whatever the split into
    processes and micro-batches.
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
            n_global = run.global_count(batch.mask.sum())
            loss = torch.zeros((), device=run.device)  # the step's loss: the micro-batches' shares summed
            logs: list[tuple[dict[str, float], int]] = []
            for rows in loop.micro_batches(len(batch.ids)):
                micro = batch_rows(batch, rows)
                out = loop.wrapped(
                    "student",
                    pixel_values=micro.pixel_values.to(run.device),
                    input_ids=micro.input_ids.to(run.device),
                    attention_mask=micro.attention_mask.to(run.device),
                    suffix_ids=suffix_ids,
                )
                loss_sum, extra = loss_fn(out, micro)
                micro_loss = micro_batch_loss(loss_sum, n_global, run.world_size)
                loop.backward(micro_loss)
                loss = loss + micro_loss.detach()
                logs.append((extra, int(micro.mask.sum())))
            grad_norm, lr = loop.update()
            loop.step += 1

            if loop.log_due:
                logged = run.mean_over_processes({loss_name: float(loss), **entry_weighted(logs)})
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
