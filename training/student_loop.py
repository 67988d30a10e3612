"""The student training loop that SFT and RISD share (:func:`run_student_loop`): one-pass scoring of all
dimensions, a masked loss averaged over the labelled entries of the *global* batch, AdamW, checkpoints,
metrics. The trainers differ only in the data's targets and the loss (:data:`StudentLoss`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from zreward_deploy.modeling import ZRewardModel, ZRewardOutput
from zreward_deploy.processing import ZRewardProcessor

from .data import StudentBatch, StudentData
from .evaluate import evaluate_during_training
from .loop import TrainLoop
from .run import Run, TrainResult

# (out, batch) -> (sum of the per-entry loss over this process's labelled entries, scalar logs)
StudentLoss = Callable[[ZRewardOutput, StudentBatch], tuple[torch.Tensor, dict[str, float]]]


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
