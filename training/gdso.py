"""GDSO: the teacher's training (docs/method.md §3, Algorithm 1); with α = 0 it is the GRPO baseline.

::

    for each outer iteration (every `steps_per_iteration` steps):
        π_ref ← π_θ
        for each step:
            sample a global batch of pairs (p, I_w, I_l, ŝ_w, ŝ_l, d)
            π_old ← π_θ
            G traces per side from π_old; q, μ of each (training/rollouts.py)
            r = λ_pt r_pt + λ_pw r_pw;  advantages per side group            (Eqs. 7, 10, 13, 3)
            repeat K_gdso = `inner_updates` times:
                L = L_GRPO + α_pt L_CE + α_pw L_gap, all recomputed under π_θ  (Eq. 14)
                one AdamW update

* ``L_GRPO`` = :func:`~.losses.policy_gradient_loss` on the reasoning tokens (clipped ratio against
  π_old, k3 KL to π_ref with weight β; the score token only with ``include_score_token``).
* ``L_CE``, ``L_gap`` are computed on the score distributions read after the *sampled* traces,
  recomputed under π_θ at every inner update (:func:`~.losses.gdso_loss`); their gradient reaches the
  score-token logits and, through the hidden states, the reasoning prefix.
* π_old's log-probs are those of the first inner update (π_θ = π_old then), detached and kept; π_ref is
  a frozen copy refreshed at each outer iteration and saved in checkpoints (it is not recoverable from
  π_θ); with β = 0 none is kept.
* With ``gradient_accumulation_steps`` = k each inner update runs over k micro-batches of whole pairs
  (the rollouts are sampled for the whole batch first). Each micro-batch's terms are weighted by its
  share of the whole batch's normaliser: L_GRPO's by its share of the sequences (of the tokens with
  ``normalization=token_mean``), L_CE's and L_gap's by its share of the pairs, so the summed gradients
  are the one-batch update's.

Defaults (the paper gives none, docs/method.md §3; common GRPO-family values would be G = 8, β ≈ 0.01–0.04,
λ_pt = λ_pw = 0.5, α_pt ≈ α_pw ≈ 0.1–1, temperature 1.0, a guess of ours, not the paper's): G = 4 (8 doubles the cost of a step on a CPU for a small gain in
advantage resolution), β = 0.02, λ_pt = λ_pw = 0.5, α_pt = α_pw = 0.5, K = 2 inner updates (so that
the clipped ratio matters, as Algorithm 1's π_old implies), a reference reset every 50 steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from zreward_deploy.data import load_split
from zreward_deploy.generation import derive_seed

from .config import LABEL_SOURCES, ConfigError, help_text, require_at_least, require_one_of
from .data import PairData, resolve_dimensions
from .evaluate import evaluate_during_training
from .loop import TrainLoop
from .lora import plain_state_dict
from .losses import NORMALIZATIONS, GDSOLoss, PolicyLoss, gdso_loss, pointwise_reward, policy_gradient_loss
from .models import frozen_copy, load_model
from .rollouts import PairRollout, frozen_pass, policy_logprobs, sample_pair_rollouts, sequence_share
from .run import TrainResult, start_run
from .sampling import RolloutConfig


@dataclass
class GDSOConfig(RolloutConfig):
    """GDSO (Algorithm 1). ``batch_size`` counts pairs; each pair costs 2·G traces. The sampling fields
    (``max_new_tokens``, ``temperature``, ``top_p``, ``include_score_token``, ``eval_samples``) are
    :class:`~.sampling.RolloutConfig`'s."""

    method: ClassVar[str] = "gdso"

    learning_rate: float = field(default=3e-4, metadata=help_text("peak AdamW learning rate"))
    batch_size: int = field(
        default=8, metadata=help_text("global batch of pairs per step (split evenly across processes)")
    )
    group_size: int = field(
        default=4, metadata=help_text("G: reasoning traces sampled per side of each pair")
    )
    inner_updates: int = field(
        default=2, metadata=help_text("K_gdso: optimizer updates per sampled batch (π_old fixed across them)")
    )
    steps_per_iteration: int = field(
        default=50, metadata=help_text("M: steps per outer iteration; π_ref ← π_θ at the start of each")
    )
    beta: float = field(
        default=0.02, metadata=help_text("β: weight of the k3 KL to π_ref (0 = no reference model)")
    )
    lambda_pt: float = field(default=0.5, metadata=help_text("λ_pt: weight of the pointwise reward r_pt"))
    lambda_pw: float = field(default=0.5, metadata=help_text("λ_pw: weight of the pairwise reward r_pw"))
    alpha_pt: float = field(default=0.5, metadata=help_text("α_pt: weight of the pointwise CE loss L_CE"))
    alpha_pw: float = field(default=0.5, metadata=help_text("α_pw: weight of the score-gap loss L_gap"))
    eps_low: float = field(default=0.2, metadata=help_text("lower clip of the importance ratio (1 − ε_low)"))
    eps_high: float = field(
        default=0.2, metadata=help_text("upper clip of the importance ratio (1 + ε_high)")
    )
    normalization: str = field(
        default="sequence_mean",
        metadata=help_text(
            f"policy-loss reduction, one of {NORMALIZATIONS}: sequence_mean (GRPO), token_mean (DAPO), "
            "sequence_sum (Eq. 4 literally). Only sequence_mean and sequence_sum give the same update "
            "for any split over processes (token_mean normalises by each process's token count)"
        ),
    )
    advantage_eps: float = field(default=1e-4, metadata=help_text("ε added to the group std of the rewards"))
    label_source: str = field(
        default="scores", metadata=help_text("which human score is the label (scores, annotations or auto)")
    )
    min_gap: float = field(
        default=0.0, metadata=help_text("train on pairs whose labels differ by more than this")
    )
    rollout_chunk: int = field(
        default=8,
        metadata=help_text(
            "pairs per generation chunk (one generate call per dimension in a chunk); traces do not "
            "depend on the number of processes when each process's share of the batch is a multiple of it"
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ConfigError("data", "is required (a dataset folder)")
        require_at_least(self, 1, "group_size", "inner_updates", "steps_per_iteration", "rollout_chunk")
        require_at_least(
            self,
            0,
            "beta",
            "lambda_pt",
            "lambda_pw",
            "alpha_pt",
            "alpha_pw",
            "eps_low",
            "eps_high",
            "min_gap",
        )
        if not self.advantage_eps > 0:
            raise ConfigError("advantage_eps", f"must be > 0, got {self.advantage_eps}")
        require_one_of("normalization", self.normalization, NORMALIZATIONS)
        require_one_of("label_source", self.label_source, LABEL_SOURCES)


def train_gdso(cfg: GDSOConfig) -> TrainResult:
    """Run GDSO (or GRPO, with a :class:`~.grpo.GRPOConfig`); the model is saved to ``output_dir/model``."""
    run = start_run(cfg)
    if run.already_trained:
        return run.already_trained_result()
    model, processor = load_model(cfg.model, seed=cfg.seed)
    scale = processor.config.get_score_scale()
    records = load_split(cfg.data, cfg.train_split, scale=scale, rubric=processor.config.get_rubric())
    dims = resolve_dimensions(processor, records, cfg.dimensions)
    data = PairData(records, processor, dims, label_source=cfg.label_source, min_gap=cfg.min_gap)
    ref = frozen_copy(model).to(run.device) if cfg.beta > 0 else None
    extra = {"ref_model": ref} if ref is not None else {}
    loop = TrainLoop.start(
        run,
        model,
        processor,
        len(data),
        total_updates=cfg.max_steps * cfg.inner_updates,
        extra_models=extra,
        images=data.images,
        trained_dimensions=data.trained_dimensions,
    )

    def policy_pass(**inputs: Any) -> Any:
        return loop.wrapped("teacher", **inputs)

    with loop.progress() as bar:
        while loop.step < cfg.max_steps:
            started = time.perf_counter()
            if ref is not None and loop.step % cfg.steps_per_iteration == 0:
                ref.load_state_dict(plain_state_dict(model))  # π_ref ← π_θ (Algorithm 1, outer loop)
            global_batch = loop.sampler.next_batch()
            pairs = _sample_pairs(loop, cfg, data, global_batch, scale.range)
            sampled = time.perf_counter()
            ref_logp: list[torch.Tensor | None] = [None] * cfg.gradient_accumulation_steps
            if ref is not None:  # per micro-batch, as the policy's log-probs are
                ref_pass = frozen_pass(ref, processor, lambda: loop.autocast(ref))
                ref_logp = [
                    policy_logprobs(ref_pass, pairs.pairs(rows).rollout, run.device)[0]
                    for rows in loop.micro_slices(pairs.num_pairs)
                ]
            logs = _inner_updates(loop, cfg, policy_pass, pairs, ref_logp, scale.range)
            loop.step += 1

            if loop.log_due:
                elapsed = time.perf_counter() - started
                row = run.mean_over_processes({**logs, **_rollout_stats(pairs, scale.range)})
                tokens = run.global_count(pairs.rollout.num_generated_tokens)
                row.update(
                    lr=logs["lr"],
                    grad_norm=logs["grad_norm"],
                    tokens_per_s=float(tokens) / elapsed,
                    pairs_per_s=len(global_batch) / elapsed,
                    sample_time_frac=(sampled - started) / elapsed,
                )
                if loop.eval_due:
                    row.update(
                        evaluate_during_training(run, model, processor, dims, True, cfg.eval_reasoning)
                    )
                loop.log(row, bar, "loss", "reward_mean")
            loop.end_step(bar)
    return loop.finish(dims, reasoning=True, reasoning_kwargs=cfg.eval_reasoning)


def _sample_pairs(
    loop: TrainLoop, cfg: GDSOConfig, data: PairData, global_batch: list[int], score_range: float
) -> PairRollout:
    """This process's share of ``global_batch``: G traces per side of each pair, sampled from π_old = π_θ
    (the current weights, no copy needed), with their rewards and advantages. Each chunk's seed derives
    from the step and the chunk's place in the global batch, not from the process."""
    run = loop.run
    offset = run.local_offset(global_batch)
    with loop.autocast():  # mixed_precision: sampled under the autocast the training passes run under
        return sample_pair_rollouts(
            loop.model,
            loop.processor,
            data.batch(run.local(global_batch)),
            cfg.group_size,
            cfg,
            chunk_size=cfg.rollout_chunk,
            chunk_seed=lambda start, dim, o=offset, s=loop.step: derive_seed(
                cfg.seed, "rollout", s, o + start, dim
            ),
            score_range=score_range,
            lambda_pt=cfg.lambda_pt,
            lambda_pw=cfg.lambda_pw,
            advantage_eps=cfg.advantage_eps,
        )


def _inner_updates(
    loop: TrainLoop,
    cfg: GDSOConfig,
    policy_pass: Any,
    pairs: PairRollout,
    ref_logp: list[torch.Tensor | None],
    score_range: float,
) -> dict[str, float]:
    """K_gdso updates on one sampled batch, each over the micro-batches of ``loop.micro_batches``
    (``ref_logp``: π_ref's log-probs per micro-batch, or ``None`` each). Logs the loss terms of the first
    update (taken at π_θ = π_old, so they are the on-policy values of the step) and those of the last
    one, each over the whole batch."""
    whole_mask = pairs.rollout.policy_mask
    old_logp: list[torch.Tensor | None] = [None] * len(ref_logp)  # π_old's, per micro-batch
    logs: dict[str, float] = {}
    for k in range(cfg.inner_updates):
        step: dict[str, float] = dict.fromkeys(("loss", "grpo", "policy", "kl", "ce", "gap", "clip"), 0.0)
        for i, rows in enumerate(loop.micro_batches(pairs.num_pairs)):
            part = pairs.pairs(rows)
            part_mask = part.rollout.policy_mask
            w_pg = sequence_share(part_mask, whole_mask, cfg.normalization)
            w_pair = part.num_pairs / pairs.num_pairs
            terms, pg, token_logp = _micro_batch_terms(
                loop, cfg, policy_pass, part, old_logp[i], ref_logp[i], score_range, w_pg, w_pair
            )
            if old_logp[i] is None:  # first update: π_θ = π_old, so these are π_old's log-probs
                old_logp[i] = token_logp.detach()
            loop.backward(terms.total)
            tokens = sequence_share(part_mask, whole_mask, "token_mean")
            for key, value, weight in (
                ("loss", terms.total, 1.0), ("grpo", terms.grpo, 1.0), ("policy", pg.policy, w_pg),
                ("kl", pg.kl, w_pg), ("ce", terms.ce, w_pair), ("gap", terms.gap, w_pair),
                ("clip", pg.clip_fraction, tokens),
            ):  # fmt: skip
                step[key] += weight * float(value.detach())
        grad_norm, lr = loop.update()
        if k == 0:
            logs = {key: step[key] for key in ("loss", "grpo", "policy", "kl", "ce", "gap")}
            logs.update(grad_norm=grad_norm, lr=lr)
    # the last update's terms: off-policy (ratio ≠ 1) once K > 1, so the clip and the KL show here
    logs.update(
        loss_last=step["loss"], policy_last=step["policy"], kl_last=step["kl"], clip_fraction=step["clip"]
    )
    return logs


def _micro_batch_terms(
    loop: TrainLoop,
    cfg: GDSOConfig,
    policy_pass: Any,
    part: PairRollout,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    score_range: float,
    w_pg: float,
    w_pair: float,
) -> tuple[GDSOLoss, PolicyLoss, torch.Tensor]:
    """One micro-batch's loss under π_θ: ``total = w_pg·L_GRPO + w_pair·(α_pt L_CE + α_pw L_gap)`` (its
    share of the whole batch's L; with one micro-batch both weights are 1 and nothing is rescaled), with
    ``grpo`` weighted likewise and ``ce``, ``gap`` as computed. Returns also the policy terms and the
    token log-probs."""
    device = loop.run.device
    token_logp, log_q, mu = policy_logprobs(policy_pass, part.rollout, device)
    pg = policy_gradient_loss(
        token_logp,
        part.advantages.reshape(-1).to(device),  # rows (pair, side, sample), like the rollout
        part.rollout.policy_mask.to(device),
        old_logp=old_logp,
        ref_logp=None if ref_logp is None else ref_logp.to(device),
        beta=cfg.beta,
        eps_low=cfg.eps_low,
        eps_high=cfg.eps_high,
        normalization=cfg.normalization,
    )
    log_q_w, log_q_l = part.split_sides(log_q)
    mu_w, mu_l = part.split_sides(mu)
    terms = gdso_loss(
        pg.loss if w_pg == 1.0 else pg.loss * w_pg,
        log_q_w=log_q_w,
        log_q_l=log_q_l,
        target_w=part.target_w.to(device),
        target_l=part.target_l.to(device),
        mu_w=mu_w,
        mu_l=mu_l,
        label_w=part.label_w.to(device),
        label_l=part.label_l.to(device),
        score_range=score_range,
        alpha_pt=cfg.alpha_pt * w_pair,
        alpha_pw=cfg.alpha_pw * w_pair,
    )
    return terms, pg, token_logp


def _rollout_stats(pairs: PairRollout, score_range: float) -> dict[str, float]:
    """Rewards, advantages' spread and how good the sampled scores are (for the metrics log)."""
    r = pairs.rewards
    mu = pairs.rollout.mu.reshape(pairs.num_pairs, 2, pairs.group_size)
    labels = torch.stack([pairs.label_w, pairs.label_l], dim=1)
    r_pt = pointwise_reward(mu.reshape(-1, pairs.group_size), labels.reshape(-1), score_range)
    mask = pairs.rollout.reasoning_mask
    return {
        "reward_mean": float(r.mean()),
        "reward_std": float(r.std(unbiased=False)),
        "reward_group_std": float(r.std(-1, unbiased=False).mean()),
        "reward_pt_mean": float(r_pt.mean()),
        "advantage_abs_mean": float(pairs.advantages.abs().mean()),
        "advantage_zero_frac": float((pairs.advantages == 0).float().mean()),
        "mu_mae": float((mu - labels.unsqueeze(-1)).abs().mean()),
        "pair_acc": float((mu[:, 0].unsqueeze(-1) > mu[:, 1].unsqueeze(-2)).float().mean()),
        "reasoning_len": float(mask.sum(1).float().mean()),
        "finished_frac": float(pairs.rollout.finished.float().mean()),
    }
