"""Rollouts: sample teacher reasoning, score it, reward it, and recompute its log-probs for the loss.

GDSO / GRPO (docs/method.md §3, Algorithm 1): for each pair (w, l) on dimension d, G reasoning traces per side
are sampled from π_old (the current policy, frozen for the step) with
:func:`~zreward_deploy.generation.generate_reasoning`, which also reads each trace's score distribution
q_{j,i} and its expectation μ_{j,i}. From the μ's come the rewards ``r = λ_pt r_pt + λ_pw r_pw``
(``gdso_rewards``) and the advantages, normalised within each side's group of G
(``group_advantages``). The trainer then recomputes, by teacher forcing over the same sequences
(:func:`~zreward_deploy.generation.teacher_forward`), the log-probs of the sampled tokens and the score
distributions under π_θ (with gradients, at every inner update), π_old (= π_θ at the first inner update,
kept) and π_ref (a frozen copy).

**Policy tokens.** The reasoning tokens (including the ``</think>`` stop the model chose) are the
policy's actions. The score is *read* as a distribution after the forced answer template, not sampled:
the reward depends on q, not on a sampled digit, so by default no score token enters the
policy-gradient term. With ``include_score_token=True`` a score token s ~ q is sampled per trace and
its log-probability ``log q(s)`` (the restricted Q-Align read-out) is appended as one more policy token
(its importance ratio, clip and KL then count like any other token). OPD uses that form by default: its
student must be taught the teacher's score, not only its reasoning.

**Seeds and batching.** Groups (a pair's two sides, or one OPD item) are sampled in chunks of
``chunk_size`` groups, one ``generate_reasoning`` call per dimension in a chunk, seeded from
``(run seed, step, the chunk's first index in the global batch, dimension)``. A trace therefore does not
depend on how the global batch is split over processes as long as each process's share is a multiple of
the chunk size (the 2-process test relies on it); bigger chunks batch the generation better.

Row order of a pair rollout: ``(pair b, side j ∈ {w, l}, sample i)``, N = 2·B·G, so ``[N]`` tensors
reshape to ``[B, 2, G]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from zreward_deploy.generation import derive_seed, generate_reasoning, teacher_forward
from zreward_deploy.modeling import ZRewardModel, ZRewardOutput
from zreward_deploy.processing import ZRewardProcessor

from .data import ItemBatch, PairBatch
from .losses import gdso_rewards, group_advantages
from .sampling import SamplingConfig

TeacherPass = Callable[..., tuple[torch.Tensor, ZRewardOutput]]


@dataclass
class Rollout:
    """N sampled traces, ready to be teacher-forced.

    Attributes:
        images: ``[N, 3, S, S]`` the images in [0, 1], one row per trace (another model's processor
            normalises and resizes them: the OPD teacher).
        pixel_values: ``[N, 3, S, S]`` those images normalised for the sampling model.
        prompt_ids: N teacher-prompt id lists.
        reasoning_ids, reasoning_mask: ``[N, T]`` sampled reasoning tokens, right-padded.
        finished: ``[N]`` whether each trace stopped by itself.
        probs: ``[N, K]`` score distributions read after each trace under the sampling policy.
        mu: ``[N]`` their expectations.
        score_index: ``[N]`` sampled score-token index (into the K score values) when the score token
            is a policy token, else ``None``.
        texts: the N decoded reasoning texts.
    """

    images: torch.Tensor
    pixel_values: torch.Tensor
    prompt_ids: list[list[int]]
    reasoning_ids: torch.Tensor
    reasoning_mask: torch.Tensor
    finished: torch.Tensor
    probs: torch.Tensor
    mu: torch.Tensor
    score_index: torch.Tensor | None
    texts: list[str]

    def __len__(self) -> int:
        return self.reasoning_ids.shape[0]

    @property
    def num_generated_tokens(self) -> int:
        return int(self.reasoning_mask.sum())

    def rows(self, rows: slice) -> Rollout:
        """Rows ``rows`` of the rollout (a micro-batch): the padded width stays the whole rollout's, so a
        row's tensors are the same as in the whole."""
        return Rollout(**{f.name: _take(getattr(self, f.name), rows) for f in dataclasses.fields(self)})

    @property
    def policy_mask(self) -> torch.Tensor:
        """``[N, T(+1)]`` the tokens of the policy-gradient term: the reasoning tokens, plus the sampled
        score token as a last column when it is included."""
        mask = self.reasoning_mask.bool()
        if self.score_index is None:
            return mask
        return torch.cat([mask, torch.ones(len(self), 1, dtype=torch.bool)], dim=1)

    def teacher_inputs(
        self, device: torch.device | str, processor: ZRewardProcessor | None = None
    ) -> dict[str, Any]:
        """Keyword arguments of ``teacher_forward`` / ``TrainingForward("teacher", ...)``; with
        ``processor``, the images are prepared for that (other) model."""
        pixel_values = self.pixel_values if processor is None else processor.preprocess_tensor(self.images)
        return {
            "pixel_values": pixel_values.to(device),
            "prompt_ids": self.prompt_ids,
            "reasoning_ids": self.reasoning_ids.to(device),
            "reasoning_mask": self.reasoning_mask.to(device),
            "finished": self.finished.to(device),
        }


def _take(value: Any, rows: slice) -> Any:
    return None if value is None else value[rows]


def sequence_share(part: torch.Tensor, whole: torch.Tensor, normalization: str) -> float:
    """The share of a policy loss's normaliser (``training.losses._aggregate``) that the rows of ``part``
    hold: of the tokens for ``"token_mean"``, else of the sequences with at least one valid token.
    ``part`` and ``whole`` are ``[n, T]`` policy masks. Weighting a micro-batch's loss by its share makes
    the micro-batches' sum the whole batch's loss (1.0 when ``part`` is all of it)."""
    if part.shape[0] == whole.shape[0]:
        return 1.0
    if normalization == "token_mean":
        return float(part.sum()) / max(float(whole.sum()), 1.0)
    counted = (whole.sum(-1) > 0).sum()
    if counted == 0:  # no valid token anywhere: every part's loss is 0
        return part.shape[0] / whole.shape[0]
    return float((part.sum(-1) > 0).sum()) / float(counted)


Group = tuple[torch.Tensor, str, str]  # (images [k, 3, S, S] in [0, 1], prompt, dimension)


def sample_groups(
    model: ZRewardModel,
    processor: ZRewardProcessor,
    groups: Sequence[Group],
    num_samples: int,
    sampling: SamplingConfig,
    chunk_size: int,
    chunk_seed: Callable[[int, str], int],
) -> Rollout:
    """Sample ``num_samples`` traces for every image of every group.

    Groups are taken ``chunk_size`` at a time; within a chunk, one ``generate_reasoning`` call per
    dimension present (the teacher prompt names the dimension), seeded with
    ``chunk_seed(index of the chunk's first group, dimension)``. Larger chunks batch generation better;
    the traces of a group depend only on its chunk, so they do not change with the number of processes
    as long as each process's share of the batch is a multiple of ``chunk_size``.

    Args:
        groups: ``(images [k, 3, S, S] in [0, 1], prompt, dimension)``; all images of a group share the
            prompt and the dimension.
        num_samples: traces per image (G).

    Returns:
        A :class:`Rollout` whose rows are ``(group, image, sample)`` in order.
    """
    per_group: list[dict[str, Any]] = [{} for _ in groups]
    for start in range(0, len(groups), chunk_size):
        chunk = list(range(start, min(start + chunk_size, len(groups))))
        for dimension in dict.fromkeys(groups[g][2] for g in chunk):
            members = [g for g in chunk if groups[g][2] == dimension]
            traces = _sample_dimension(
                model,
                processor,
                [groups[g] for g in members],
                dimension,
                num_samples,
                sampling,
                seed=chunk_seed(start, dimension),
            )
            for g, group_traces in zip(members, traces, strict=True):
                per_group[g] = group_traces
    width = max(p["ids"].shape[1] for p in per_group)
    pad_id = processor.tokenizer.pad_token_id

    def padded(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    images = torch.cat([imgs.repeat_interleave(num_samples, dim=0) for imgs, _, _ in groups])
    return Rollout(
        images=images,
        pixel_values=processor.preprocess_tensor(images),
        prompt_ids=[ids for p in per_group for ids in p["prompt_ids"]],
        reasoning_ids=torch.cat([padded(p["ids"], pad_id) for p in per_group]),
        reasoning_mask=torch.cat([padded(p["mask"], 0) for p in per_group]),
        finished=torch.cat([p["finished"] for p in per_group]),
        probs=torch.cat([p["probs"] for p in per_group]),
        mu=torch.cat([p["mu"] for p in per_group]),
        score_index=None
        if not sampling.include_score_token
        else torch.cat([p["score_index"] for p in per_group]),
        texts=[t for p in per_group for t in p["texts"]],
    )


def _sample_dimension(
    model: ZRewardModel,
    processor: ZRewardProcessor,
    groups: Sequence[Group],
    dimension: str,
    num_samples: int,
    sampling: SamplingConfig,
    seed: int,
) -> list[dict[str, Any]]:
    """One ``generate_reasoning`` call for ``groups`` of one dimension, seeded with ``seed`` (and the
    score tokens, when sampled, from a generator derived from it). Returns each group's traces (its
    images' rows, ``(image, sample)`` in order): ids, mask, finished, score distributions, μ, prompt ids,
    texts and score-token indices (``None`` unless ``sampling.include_score_token``)."""
    device = next(model.parameters()).device
    images = torch.cat([imgs for imgs, _, _ in groups])
    prompts = [prompt for imgs, prompt, _ in groups for _ in range(imgs.shape[0])]
    out = generate_reasoning(
        model,
        processor,
        images.to(device),
        prompts,
        dimension,
        num_samples=num_samples,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=seed,
    )
    score_index = None
    if sampling.include_score_token:
        g = torch.Generator().manual_seed(derive_seed(seed, "score-token"))
        score_index = torch.multinomial(out.probs.detach().cpu().double(), 1, generator=g).squeeze(1)
    traces, row = [], 0
    for imgs, _, _ in groups:  # rows of a call are (image, sample) in order: split them back by group
        rows = slice(row, row + imgs.shape[0] * num_samples)
        traces.append(
            {
                "ids": out.reasoning_ids[rows],
                "mask": out.reasoning_mask[rows],
                "finished": out.finished[rows],
                "probs": out.probs[rows].detach().cpu(),
                "mu": out.mean[rows].detach().cpu(),
                "prompt_ids": out.prompt_ids[rows],
                "texts": out.texts[rows],
                "score_index": None if score_index is None else score_index[rows],
            }
        )
        row = rows.stop
    return traces


def policy_logprobs(
    teacher_pass: TeacherPass,
    rollout: Rollout,
    device: torch.device | str,
    processor: ZRewardProcessor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced log-probs of a rollout's policy tokens and its score distributions.

    Args:
        teacher_pass: ``teacher_forward``-like callable (the prepared ``TrainingForward`` bound to
            ``"teacher"`` for π_θ, or ``teacher_forward`` on a frozen model for π_ref).

    Returns:
        ``token_logp [N, T(+1)]`` aligned with :attr:`Rollout.policy_mask` (0 on padding),
        ``log_q [N, K]`` and ``mu [N]`` of the score distributions (with gradients if the pass has them).
    """
    token_logp, scores = teacher_pass(**rollout.teacher_inputs(device, processor))
    log_q = scores.logprobs[:, 0]
    if rollout.score_index is not None:
        picked = log_q.gather(1, rollout.score_index.to(log_q.device).view(-1, 1))
        token_logp = torch.cat([token_logp, picked], dim=1)
    return token_logp, log_q, scores.mean[:, 0]


def frozen_pass(
    model: ZRewardModel,
    processor: ZRewardProcessor,
    precision: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
) -> TeacherPass:
    """A no-grad :data:`TeacherPass` over a frozen model (π_ref, or the OPD teacher); each pass runs inside
    ``precision()`` (the run's ``mixed_precision`` for that model, e.g. ``lambda: loop.autocast(ref)``)."""

    @torch.no_grad()
    def run(**inputs: Any) -> tuple[torch.Tensor, ZRewardOutput]:
        with precision():
            return teacher_forward(model, processor, **inputs, return_logprobs=True)

    return run


# --------------------------------------------------------------------------------------------------
# GDSO / GRPO pair rollouts
# --------------------------------------------------------------------------------------------------


@dataclass
class PairRollout:
    """G traces per side of B pairs, their rewards and advantages.

    Attributes:
        rollout: the 2·B·G traces, rows ``(pair, side, sample)``.
        group_size: G.
        label_w, label_l: ``[B]``; target_w, target_l: ``[B, K]`` (from the batch).
        rewards, advantages: ``[B, 2, G]`` (side 0 = w, 1 = l), computed from the sampling policy's μ.
    """

    rollout: Rollout
    group_size: int
    label_w: torch.Tensor
    label_l: torch.Tensor
    target_w: torch.Tensor
    target_l: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return self.label_w.shape[0]

    def pairs(self, rows: slice) -> PairRollout:
        """Pairs ``rows`` (a micro-batch of whole pairs: both sides, all G samples, their advantages)."""
        per_pair = 2 * self.group_size
        start, stop, _ = rows.indices(self.num_pairs)
        return dataclasses.replace(
            self,
            rollout=self.rollout.rows(slice(start * per_pair, stop * per_pair)),
            **{f: getattr(self, f)[rows] for f in ("label_w", "label_l", "target_w", "target_l", "rewards",
                                                   "advantages")},
        )  # fmt: skip

    def split_sides(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, ...]`` rows -> the w and l halves, each ``[B, G, ...]``."""
        y = x.reshape(self.num_pairs, 2, self.group_size, *x.shape[1:])
        return y[:, 0], y[:, 1]


def sample_pair_rollouts(
    model: ZRewardModel,
    processor: ZRewardProcessor,
    batch: PairBatch,
    group_size: int,
    sampling: SamplingConfig,
    *,
    chunk_size: int,
    chunk_seed: Callable[[int, str], int],
    score_range: float,
    lambda_pt: float,
    lambda_pw: float,
    advantage_eps: float = 1e-4,
) -> PairRollout:
    """Algorithm 1's inner sampling for a batch of pairs: G traces per side, μ, rewards (Eqs. 7, 10,
    13) and per-side group advantages (Eq. 3).

    Args:
        batch: B pairs.
        group_size: G.
        chunk_size, chunk_seed: pairs per generation chunk and the chunk's seed (see
            :func:`sample_groups`).
    """
    groups = [
        (torch.stack([batch.images_w[b], batch.images_l[b]]), batch.prompts[b], batch.dimensions[b])
        for b in range(len(batch))
    ]
    rollout = sample_groups(model, processor, groups, group_size, sampling, chunk_size, chunk_seed)
    mu = rollout.mu.reshape(len(batch), 2, group_size)
    r_w, r_l = gdso_rewards(
        mu[:, 0],
        mu[:, 1],
        batch.label_w,
        batch.label_l,
        score_range=score_range,
        lambda_pt=lambda_pt,
        lambda_pw=lambda_pw,
    )
    rewards = torch.stack([r_w, r_l], dim=1)
    return PairRollout(
        rollout=rollout,
        group_size=group_size,
        label_w=batch.label_w,
        label_l=batch.label_l,
        target_w=batch.target_w,
        target_l=batch.target_l,
        rewards=rewards,
        advantages=group_advantages(rewards, eps=advantage_eps),
    )


def sample_item_rollouts(
    model: ZRewardModel,
    processor: ZRewardProcessor,
    batch: ItemBatch,
    sampling: SamplingConfig,
    *,
    chunk_size: int,
    chunk_seed: Callable[[int, str], int],
) -> Rollout:
    """One trace per (image, prompt, dimension) item (OPD's student samples)."""
    groups = [(batch.images[i : i + 1], batch.prompts[i], batch.dimensions[i]) for i in range(len(batch))]
    return sample_groups(model, processor, groups, 1, sampling, chunk_size, chunk_seed)
