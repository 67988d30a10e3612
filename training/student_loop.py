"""The student training loop that SFT and RISD share (:func:`run_student_loop`): one-pass scoring of all
dimensions, a masked loss averaged over the labelled entries of the *global* batch, AdamW, checkpoints,
metrics. The trainers differ only in the data's targets and the loss (:data:`StudentLoss`).

With judgements (a preference file, :class:`~.data.PreferenceData`) a pairwise term joins the loss:
``preference_weight`` × the Bradley–Terry loss on the student's μ (:func:`~.losses.preference_loss`),
averaged over the step's *global* batch of judgements, which has its own data order beside the items'
(or is the only one, when no record has a target).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import torch

from zreward_deploy.generation import derive_seed
from zreward_deploy.modeling import ZRewardModel, ZRewardOutput
from zreward_deploy.processing import ZRewardProcessor

from .data import OVERALL_INDEX, PreferenceData, StudentBatch, StudentData, joint_batch
from .evaluate import evaluate_during_training
from .loop import EpochSampler, TrainLoop, check_batch_split, logger
from .losses import preference_loss
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


def judged_means(
    mean: torch.Tensor, batch: StudentBatch, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """μ of the two sides of each judgement of ``batch`` on its dimension, from the student's
    ``mean [B, D]``: that dimension's column, or for :data:`~.data.OVERALL_INDEX` the reward
    Σ_d w_d μ_d with ``weights [D]`` (the rubric's normalised weights). Returns ``(mu_a, mu_b)``, ``[P]``."""
    dim = batch.pref_dim.to(mean.device)
    rows_a, rows_b = batch.pref_a.to(mean.device), batch.pref_b.to(mean.device)
    column = dim.clamp(min=0).unsqueeze(1)
    sides = []
    for rows in (rows_a, rows_b):
        per_dim = mean[rows]  # [P, D]
        mu = per_dim.gather(1, column).squeeze(1)
        if weights is not None:
            mu = torch.where(dim == OVERALL_INDEX, per_dim @ weights.to(per_dim), mu)
        sides.append(mu)
    return sides[0], sides[1]


def preference_term(
    out: ZRewardOutput, batch: StudentBatch, weights: torch.Tensor | None
) -> tuple[torch.Tensor, int, int]:
    """The summed :func:`~.losses.preference_loss` over ``batch``'s judgements, the number of non-tie
    judgements the student orders as judged (strictly, as HPA counts) and the number of non-tie ones."""
    mu_a, mu_b = judged_means(out.mean, batch, weights)
    target = batch.pref_target.to(mu_a.device)
    loss_sum = preference_loss(mu_a, mu_b, target) * len(target)
    with torch.no_grad():
        decided = target != 0.5
        right = ((mu_a - mu_b) * (2 * target - 1) > 0) & decided
    return loss_sum, int(right.sum()), int(decided.sum())


def run_student_loop(
    run: Run,
    model: ZRewardModel,
    processor: ZRewardProcessor,
    data: StudentData,
    loss_fn: StudentLoss,
    loss_name: str,
    preferences: PreferenceData | None = None,
) -> TrainResult:
    """The student training loop (SFT and RISD): one-pass scoring of all dimensions, a masked loss
    averaged over the labelled entries of the *global* batch, AdamW, checkpoints, metrics.

    Per step: global batch of indices → this process's slice → ``gradient_accumulation_steps``
    micro-batches, each a forward, ``loss_fn`` (the summed per-entry loss over its labelled entries) and a
    backward of :func:`micro_batch_loss`; dividing by the global count (times the number of processes,
    because DDP averages gradients) makes the update the global mean's gradient whatever the split into
    processes and micro-batches.

    With ``preferences`` (non-empty), each step also draws a global batch of judgements
    (``preference_batch_size``) and runs :func:`_run_joint_loop` instead.
    """
    if preferences is not None and preferences.left_out and run.is_main:
        logger.warning(preferences.describe_left_out())
    if preferences is not None and len(preferences):
        return _run_joint_loop(run, model, processor, data, loss_fn, loss_name, preferences)
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


def _run_joint_loop(
    run: Run,
    model: ZRewardModel,
    processor: ZRewardProcessor,
    data: StudentData,
    loss_fn: StudentLoss,
    loss_name: str,
    preferences: PreferenceData,
) -> TrainResult:
    """:func:`run_student_loop` with judgements. Items with targets and judgements are two data orders:
    the main sampler draws the items and a second one (seeded from ``seed`` and "preferences") the
    judgements, or, when no record has a target, the main sampler draws the judgements. Each of the
    ``gradient_accumulation_steps`` micro-batches is one forward of its items and its judgements' images
    (:func:`~.data.joint_batch`) and one backward of

        L = (Σ item losses) · W / n_items + λ · (Σ judgement losses) · W / n_judgements

    where n_items is the labelled entries of the global item batch (as without judgements), n_judgements
    the global number of judgements per step, W the number of processes: the shares sum to the global
    means, whatever the split into processes and micro-batches.
    """
    cfg = run.config
    with_items = bool(data.mask.any())
    per_step = cfg.judgements_per_step
    check_batch_split(run, "preference_batch_size" if cfg.preference_batch_size else "batch_size", per_step)
    trained = set(data.trained_dimensions) | set(preferences.trained_dimensions)
    judgements = EpochSampler(len(preferences), per_step, derive_seed(cfg.seed, "preferences"))
    loop = TrainLoop.start(
        run, model, processor, len(data) if with_items else len(preferences), total_updates=cfg.max_steps,
        images=data.images, trained_dimensions=[d for d in data.dimensions if d in trained],
        batch_size=cfg.batch_size if with_items else per_step,
        extra_samplers={"preferences": judgements} if with_items else None,
    )  # fmt: skip
    suffix_ids = [s.to(run.device) for s in processor.suffix_ids(data.dimensions)]
    weights = None if preferences.weights is None else preferences.weights.to(run.device)
    lam = cfg.preference_weight

    with loop.progress() as bar:
        while loop.step < cfg.max_steps:
            started = time.perf_counter()
            first = loop.sampler.next_batch()
            items, judged = (
                (first, loop.extra_samplers["preferences"].next_batch()) if with_items else ([], first)
            )
            local_items, local_judged = run.local(items), run.local(judged)
            n_items = run.global_count(data.mask[local_items].sum()) if with_items else None
            n_judged = torch.tensor(float(len(judged)), device=run.device)
            item_loss = torch.zeros((), device=run.device)
            pref_loss = torch.zeros((), device=run.device)
            logs: list[tuple[dict[str, float], int]] = []
            right = decided = 0
            item_slices = loop.micro_slices(len(local_items))
            for i, rows in enumerate(loop.micro_batches(len(local_judged))):
                micro_items = local_items[item_slices[i]]
                micro = joint_batch(data, micro_items, preferences, local_judged[rows])
                out = loop.wrapped(
                    "student",
                    pixel_values=micro.pixel_values.to(run.device),
                    input_ids=micro.input_ids.to(run.device),
                    attention_mask=micro.attention_mask.to(run.device),
                    suffix_ids=suffix_ids,
                )
                pref_sum, r, n = preference_term(out, micro, weights)
                pref_share = micro_batch_loss(pref_sum, n_judged, run.world_size)
                micro_loss = lam * pref_share
                right, decided = right + r, decided + n
                if with_items:
                    loss_sum, extra = loss_fn(out, micro)
                    item_share = micro_batch_loss(loss_sum, n_items, run.world_size)
                    micro_loss = item_share + micro_loss
                    item_loss = item_loss + item_share.detach()
                    logs.append((extra, int(micro.mask.sum())))
                loop.backward(micro_loss)
                pref_loss = pref_loss + pref_share.detach()
            grad_norm, lr = loop.update()
            loop.step += 1

            if loop.log_due:
                values = {"preference": float(pref_loss), "preference_acc": right / max(decided, 1)}
                if with_items:
                    values.update({loss_name: float(item_loss), **entry_weighted(logs)})
                logged = run.mean_over_processes(values)
                total = logged["preference"] * lam + (logged[loss_name] if with_items else 0.0)
                elapsed = time.perf_counter() - started
                row = {
                    **logged,
                    "loss": total,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    **({"entries": int(n_items)} if with_items else {}),
                    "judgements": len(judged),
                    "items_per_s": (len(items) + 2 * len(judged)) / elapsed,
                }
                if loop.eval_due:
                    row.update(
                        evaluate_during_training(run, model, processor, data.dimensions, reasoning=False)
                    )
                loop.log(row, bar, "loss")
            loop.end_step(bar)
    return loop.finish(data.dimensions, reasoning=False)
