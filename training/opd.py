"""OPD baseline: on-policy distillation of a reasoning teacher into a reasoning student (docs/method.md §5).

Per step, for a batch of (image, prompt, dimension) items (labels not needed):

1. the student samples its own trajectory with the teacher template: reasoning, then a score token
   s ~ q_S read after it (``include_score_token``, on by default: without it only the reasoning text
   would be distilled, not the judgement);
2. the frozen teacher teacher-forces the same tokens: ``log π_T(y_t | y_<t)`` (for the score token the
   restricted read-out ``log q_T(s)``);
3. per-token advantage ``A_t = log π_T − log π_S,old`` (stop-gradient; :func:`~.losses.opd_advantages`)
   and loss ``−(1/T) Σ_t A_t log π_S(y_t | y_<t)`` (:func:`~.losses.opd_loss`), one update per batch
   (π_S,old = π_S at that update, so this is on-policy).

With ``gradient_accumulation_steps`` = k, steps 2–3 run on k micro-batches of whole items (the traces are
sampled for the whole batch first), each loss weighted by the micro-batch's share of the batch's
sequences (the loss is a mean over sequences), so the summed gradients are the one-batch update's.

The OPD student still reasons at inference (scored like a teacher, ``ReasoningScorer``). Teacher and
student must share the tokenizer and the score scale (the teacher scores the student's token ids);
the teacher sees the student's images resized to its own resolution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from zreward_deploy.data import load_split
from zreward_deploy.generation import derive_seed

from .config import ConfigError, help_text, require_at_least
from .data import ItemData, resolve_dimensions
from .evaluate import evaluate_during_training
from .loop import TrainLoop
from .losses import opd_advantages, opd_loss
from .models import frozen_copy, load_model
from .rollouts import Rollout, frozen_pass, policy_logprobs, sample_item_rollouts, sequence_share
from .run import TrainResult, start_run
from .sampling import RolloutConfig, sampling_field


@dataclass
class OPDConfig(RolloutConfig):
    """OPD: the student samples, the teacher grades every token, reverse-KL policy gradient."""

    method: ClassVar[str] = "opd"

    teacher: str = field(
        default="", metadata=help_text("teacher model directory (required), e.g. a GDSO run's model/")
    )
    learning_rate: float = field(default=3e-4, metadata=help_text("peak AdamW learning rate"))
    # RolloutConfig's sampling fields, with help that names who samples (the student)
    max_new_tokens: int = sampling_field("max_new_tokens", "longest student reasoning trace (tokens)")
    temperature: float = sampling_field("temperature", "student sampling temperature")
    top_p: float = sampling_field("top_p", "student nucleus sampling threshold")
    include_score_token: bool = field(
        default=True,
        metadata=help_text(
            "distil the sampled score token too (its log q under teacher and student), not only the reasoning"
        ),
    )
    rollout_chunk: int = field(
        default=16,
        metadata=help_text(
            "items per generation chunk; traces do not depend on the number of processes when each "
            "process's share of the batch is a multiple of it"
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ConfigError("data", "is required (a dataset folder; its labels are not used)")
        if not self.teacher:
            raise ConfigError("teacher", "is required (the teacher model directory)")
        require_at_least(self, 1, "rollout_chunk")


def _check_compatible(s_proc: Any, t_proc: Any) -> None:
    if s_proc.tokenizer.get_vocab() != t_proc.tokenizer.get_vocab():
        raise ConfigError("teacher", "OPD needs the teacher to share the student's tokenizer")
    if s_proc.config.get_score_scale() != t_proc.config.get_score_scale():
        raise ConfigError("teacher", "OPD needs the teacher to share the student's score scale")


def _sample_student(loop: TrainLoop, cfg: OPDConfig, data: ItemData, global_batch: list[int]) -> Rollout:
    """One student trace (and score token) per item of this process's share of ``global_batch``, sampled
    with the current weights. Each chunk's seed derives from the step and the chunk's place in the global
    batch, not from the process."""
    run = loop.run
    offset = run.local_offset(global_batch)
    with loop.autocast():
        return sample_item_rollouts(
            loop.model,
            loop.processor,
            data.batch(run.local(global_batch)),
            cfg,
            chunk_size=cfg.rollout_chunk,
            chunk_seed=lambda start, dim, o=offset, s=loop.step: derive_seed(
                cfg.seed, "opd", s, o + start, dim
            ),
        )


def _distil(
    loop: TrainLoop, cfg: OPDConfig, teacher_pass: Any, t_proc: Any, rollout: Rollout
) -> dict[str, float]:
    """One update's micro-batches (forward of teacher and student, advantages, backward of each one's
    share of the loss). Returns the step's loss and statistics over the whole batch; with one
    micro-batch they are computed exactly as without accumulation."""
    device = loop.run.device
    whole = rollout.policy_mask
    valid = whole.sum().clamp(min=1).to(device)
    stats = dict.fromkeys(("loss", "advantage_mean", "teacher_mu_mae", "score_token_advantage"), 0.0)
    for rows in loop.micro_batches(len(rollout)):
        part = rollout.rows(rows)
        mask = part.policy_mask.to(device)
        teacher_logp, _, teacher_mu = policy_logprobs(teacher_pass, part, device, t_proc)
        student_logp, _, student_mu = policy_logprobs(_student_pass(loop), part, device)
        advantages = opd_advantages(teacher_logp, student_logp.detach(), mask)
        share = sequence_share(part.policy_mask, whole, "sequence_mean")
        loss = opd_loss(student_logp, advantages, mask)
        loss = loss if share == 1.0 else loss * share
        loop.backward(loss)
        row_share = len(part) / len(rollout)  # of the per-row means
        stats["loss"] += float(loss.detach())
        # mean over tokens of log π_T − log π_S: minus a per-token reverse-KL estimate
        stats["advantage_mean"] += float(advantages.sum() / valid)
        stats["teacher_mu_mae"] += row_share * float((student_mu.detach() - teacher_mu).abs().mean())
        if cfg.include_score_token:
            stats["score_token_advantage"] += row_share * float(advantages[:, -1].mean())
    if not cfg.include_score_token:
        del stats["score_token_advantage"]
    return stats


def _student_pass(loop: TrainLoop) -> Any:
    """The student's teacher-forced pass through the wrapped (DDP-visible) forward."""

    def student_pass(**inputs: Any) -> Any:
        return loop.wrapped("teacher", **inputs)

    return student_pass


def train_opd(cfg: OPDConfig) -> TrainResult:
    """Run OPD; the (reasoning) student is saved to ``output_dir/model``."""
    run = start_run(cfg)
    if run.already_trained:
        return run.already_trained_result()
    model, processor = load_model(cfg.model, seed=cfg.seed)
    teacher, t_proc = load_model(cfg.teacher)
    teacher = frozen_copy(teacher).to(run.device)
    _check_compatible(processor, t_proc)
    records = load_split(
        cfg.data,
        cfg.train_split,
        scale=processor.config.get_score_scale(),
        rubric=processor.config.get_rubric(),
    )
    dims = resolve_dimensions(processor, None, cfg.dimensions)
    data = ItemData(records, processor, dims)
    loop = TrainLoop.start(
        run, model, processor, len(data), total_updates=cfg.max_steps, images=data.images,
        trained_dimensions=data.trained_dimensions,
    )  # fmt: skip
    teacher_pass = frozen_pass(teacher, t_proc, lambda: loop.autocast(teacher))

    with loop.progress() as bar:
        while loop.step < cfg.max_steps:
            started = time.perf_counter()
            global_batch = loop.sampler.next_batch()
            rollout = _sample_student(loop, cfg, data, global_batch)
            stats = _distil(loop, cfg, teacher_pass, t_proc, rollout)
            grad_norm, lr = loop.update()
            loop.step += 1

            if loop.log_due:
                stats["reasoning_len"] = float(rollout.reasoning_mask.sum(1).float().mean())
                row = run.mean_over_processes(stats)
                elapsed = time.perf_counter() - started
                tokens = run.global_count(rollout.num_generated_tokens)
                row.update(lr=lr, grad_norm=grad_norm, tokens_per_s=float(tokens) / elapsed,
                           items_per_s=len(global_batch) / elapsed)  # fmt: skip
                if loop.eval_due:
                    row.update(
                        evaluate_during_training(run, model, processor, dims, True, cfg.eval_reasoning)
                    )
                loop.log(row, bar, "loss")
            loop.end_step(bar)
    return loop.finish(dims, reasoning=True, reasoning_kwargs=cfg.eval_reasoning)
