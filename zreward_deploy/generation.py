"""Teacher generation: sample reasoning, then read the score distribution after it (docs/design.md §3, §6).

The teacher's sequence is ``[image][teacher prompt ... <think>][reasoning ... </think>][answer]`` and
the score distribution is read at the last token of ``answer`` (e.g. "\\nScore: "), exactly like the
student's read-out but conditioned on the reasoning.

* :func:`generate_reasoning` samples G reasoning traces per (image, prompt) with HF ``generate`` (KV cache,
  image prefix as ``inputs_embeds``, left padding), records each sampled token's log-probability under
  the model (temperature 1, i.e. log pi(y_t | y_<t) as the policy-gradient loss needs it), then scores.
* :func:`teacher_forward` is the teacher-forced counterpart used by training: one right-padded forward
  over the same sequences gives the reasoning tokens' log-probs (with gradients) and the score
  distribution. Generation and teacher forcing agree to fp32 rounding (tested).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ZRewardInputError
from .modeling import ZRewardModel, ZRewardOutput
from .processing import ImageInput, ZRewardProcessor


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (same on every process and every run, unlike
    ``hash``): e.g. ``derive_seed(cfg.seed, "rollout", step, pair_index)``."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class ReasoningOutput:
    """G samples for each of B inputs, flattened to N = B * G rows (rows ``b*G .. b*G+G-1`` are item b).

    Attributes:
        reasoning_ids: ``[N, T]`` sampled reasoning tokens, right-padded (includes the closing
            ``</think>`` when the model produced it: that stop decision is part of the policy).
        reasoning_mask: ``[N, T]`` 1 on sampled tokens.
        logprobs: ``[N, T]`` log pi(y_t | y_<t, x) of each sampled token at temperature 1 (0 on padding).
        finished: ``[N]`` True where the trace ended with a stop token (else it was cut at max_new_tokens
            and ``</think>`` was appended before the answer).
        texts: the N decoded reasoning texts.
        item_index: ``[N]`` index of the input each row belongs to.
        scores: :class:`~zreward_deploy.modeling.ZRewardOutput` at the answer position, ``probs [N, 1, K]``.
        prompt_ids: the N teacher-prompt id lists (to rebuild the sequences in training).
    """

    reasoning_ids: torch.Tensor
    reasoning_mask: torch.Tensor
    logprobs: torch.Tensor
    finished: torch.Tensor
    texts: list[str]
    item_index: torch.Tensor
    scores: ZRewardOutput
    prompt_ids: list[list[int]]

    @property
    def probs(self) -> torch.Tensor:
        """``[N, K]`` score distributions."""
        return self.scores.probs[:, 0]

    @property
    def mean(self) -> torch.Tensor:
        """``[N]`` expectations."""
        return self.scores.mean[:, 0]


def stop_token_ids(processor: ZRewardProcessor) -> list[int]:
    """Tokens that end a reasoning trace: the tokenizer's eos and ``</think>`` when it is one token."""
    stops = [processor.tokenizer.eos_token_id]
    think_end = processor.think_end_ids()
    if len(think_end) == 1:
        stops.append(think_end[0])
    return [s for s in dict.fromkeys(stops) if s is not None]


def teacher_sequences(
    processor: ZRewardProcessor,
    prompt_ids: Sequence[Sequence[int]],
    reasoning: Sequence[Sequence[int]],
    finished: Sequence[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded teacher sequences ``prompt + reasoning (+ </think> if unfinished) + answer``.

    Returns:
        ``input_ids [N, S]``, ``attention_mask [N, S]`` and ``reasoning_start [N]`` (index in the text of
        each row's first reasoning token).
    """
    think_end, answer = processor.think_end_ids(), processor.teacher_answer_ids()
    rows = []
    for p, r, done in zip(prompt_ids, reasoning, finished, strict=True):
        r = list(r)
        # A finished trace may have stopped on eos rather than </think>: close the thought either way.
        closes = done and len(think_end) == 1 and r and r[-1] == think_end[0]
        rows.append(list(p) + r + ([] if closes else think_end) + answer)
    ids, mask = processor.pad(rows)
    return ids, mask, torch.tensor([len(p) for p in prompt_ids])


def teacher_forward(
    model: ZRewardModel,
    processor: ZRewardProcessor,
    pixel_values: torch.Tensor,
    prompt_ids: Sequence[Sequence[int]],
    reasoning_ids: torch.Tensor,
    reasoning_mask: torch.Tensor,
    finished: torch.Tensor,
    return_logprobs: bool = False,
) -> tuple[torch.Tensor, ZRewardOutput]:
    """Teacher-forced log-probs of the reasoning tokens and the score distribution after them.

    Args:
        pixel_values: ``[N, 3, S, S]`` (one row per sample; repeat images for G samples).
        prompt_ids: N teacher-prompt id lists.
        reasoning_ids, reasoning_mask: ``[N, T]`` right-padded reasoning tokens.
        finished: ``[N]`` whether each trace ended with a stop token.
        return_logprobs: also return ``log q`` of the score distribution (for CE/KL losses).

    Returns:
        ``token_logprobs [N, T]`` (0 on padding; differentiable) and a :class:`ZRewardOutput` with
        ``probs [N, 1, K]``.
    """
    lengths = reasoning_mask.long().sum(1).tolist()
    reasoning = [reasoning_ids[i, :n].tolist() for i, n in enumerate(lengths)]
    input_ids, attention_mask, start = teacher_sequences(processor, prompt_ids, reasoning, finished.tolist())
    device = pixel_values.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    hidden = model.decoder_hidden(pixel_values, input_ids, attention_mask)
    num_image = hidden.shape[1] - input_ids.shape[1]
    width = reasoning_ids.shape[1]
    if width:
        # The hidden state before token t predicts it: positions (num_image + start + t - 1).
        pos = (num_image + start.to(device) - 1).view(-1, 1) + torch.arange(width, device=device).view(1, -1)
        pos = pos.clamp(max=hidden.shape[1] - 1)
        h = hidden.gather(1, pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        logits = model.get_output_embeddings()(h).float()
        banned = list(getattr(model, "unsampleable_token_ids", ()))  # a native VLM's placeholders
        if banned:
            logits[..., banned] = float("-inf")
        token_logprobs = (
            torch.log_softmax(logits, -1).gather(-1, reasoning_ids.to(device).unsqueeze(-1)).squeeze(-1)
        )
        token_logprobs = token_logprobs * reasoning_mask.to(device)
    else:
        token_logprobs = hidden.new_zeros(reasoning_ids.shape, dtype=torch.float32)
    scores = model.score_sequences(pixel_values, input_ids, attention_mask, return_logprobs, hidden=hidden)
    return token_logprobs, scores


@torch.no_grad()
def generate_reasoning(
    model: ZRewardModel,
    processor: ZRewardProcessor,
    images: Sequence[ImageInput] | torch.Tensor,
    prompts: Sequence[str],
    dimension: str,
    num_samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> ReasoningOutput:
    """Sample reasoning traces and score after each of them.

    Args:
        images: B images (any form :meth:`ZRewardProcessor.image_tensor` accepts) or pixel-space
            ``[B, 3, H, W]`` in [0, 1].
        prompts: B prompts.
        dimension: the rubric dimension to judge.
        num_samples: G traces per input.
        max_new_tokens: cap on reasoning length; a trace cut there gets ``</think>`` appended.
        temperature, top_p: sampling parameters (the recorded log-probs are at temperature 1).
        seed: makes sampling reproducible without touching the global RNG.

    Returns:
        :class:`ReasoningOutput` with N = B * num_samples rows.
    """
    if len(prompts) != len(images):
        raise ZRewardInputError("prompts", f"got {len(prompts)} prompts for {len(images)} images")
    if num_samples < 1 or max_new_tokens < 1:
        raise ZRewardInputError("num_samples/max_new_tokens", "must both be >= 1")
    if not temperature > 0:
        raise ZRewardInputError("temperature", f"must be > 0, got {temperature}")
    processor.config.get_rubric()[dimension]  # unknown dimension -> UnknownDimensionError
    device = next(model.parameters()).device
    if isinstance(images, torch.Tensor):
        pixel_values = processor.preprocess_tensor(images)
    else:
        pixel_values = processor.preprocess_images(images)
    pixel_values = pixel_values.to(device).repeat_interleave(num_samples, dim=0)
    prompt_ids = [processor.teacher_prompt_ids(p, dimension, item=i) for i, p in enumerate(prompts)]
    prompt_ids = [ids for ids in prompt_ids for _ in range(num_samples)]

    sampled, mask, token_logprobs, finished = _sample_traces(
        model, processor, pixel_values, prompt_ids, max_new_tokens, temperature, top_p, seed
    )
    _, scores = teacher_forward(model, processor, pixel_values, prompt_ids, sampled, mask, finished)
    texts = [processor.tokenizer.decode(sampled[i, : int(mask[i].sum())]) for i in range(sampled.shape[0])]
    return ReasoningOutput(
        reasoning_ids=sampled.cpu(),
        reasoning_mask=mask.cpu(),
        logprobs=token_logprobs.cpu(),
        finished=finished.cpu(),
        texts=texts,
        item_index=torch.arange(len(prompts)).repeat_interleave(num_samples),
        scores=scores,
        prompt_ids=prompt_ids,
    )


def _sample_traces(
    model: ZRewardModel,
    processor: ZRewardProcessor,
    pixel_values: torch.Tensor,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one trace per row -> ``(token ids [N, T], mask [N, T], log-probs at temperature 1 [N, T],
    finished [N])``; a trace is valid up to and including its first stop token, padded after it."""
    device = pixel_values.device
    stops = stop_token_ids(processor)
    pad_id = processor.tokenizer.pad_token_id
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        # each model class samples through its own generate: ZRewardModel its language model on the image
        # and prompt embeddings, a native VLM the HF model's own generate
        sampled, raw_logits = model.generate_after_prompts(
            pixel_values,
            prompt_ids,
            pad_token_id=pad_id,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
        )
    logits = raw_logits.float()  # [N, T, V], before temperature / top-p
    token_logprobs = torch.log_softmax(logits, -1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
    is_stop = torch.isin(sampled, torch.tensor(stops, device=sampled.device))
    # valid = up to and including the first stop token (HF pads after it)
    stopped_before = (is_stop.long().cumsum(1) - is_stop.long()) > 0
    mask = (~stopped_before).long()
    finished = is_stop.any(1)
    token_logprobs = token_logprobs * mask
    sampled = sampled.masked_fill(mask == 0, pad_id)
    return sampled, mask, token_logprobs, finished
