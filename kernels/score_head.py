"""Score-distribution head: restricted read-out of the score tokens, softmax over them, and moments.

Math (DESIGN.md §3, §7). For N hidden rows ``h_n`` (the answer positions), the K score-token rows
``W_k`` of ``lm_head`` (rows ``score_ids`` of a ``[V, H]`` matrix, or a ready ``[K, H]`` matrix), the
score values ``v_k`` and a temperature ``T``::

    z_nk  = <h_n, W_k> / T                       logits restricted to the K score tokens
    q_nk  = softmax_k(z_nk)                      probs, a distribution over the closed score set
    mu_n  = sum_k q_nk v_k                       mean (the per-dimension reward)
    var_n = sum_k q_nk (v_k - mu_n)^2            variance (the model's uncertainty)

Generic VLM scoring computes the full-vocabulary projection ``[N, V]`` and then selects K columns;
this head never does: it reads K rows of the weight. Everything after the matmul runs in fp32, whatever
the input dtype, and the outputs (probs, mean, var, log-probs) are fp32.

This file holds the PyTorch reference (`score_head_ref`) and the public entry point (`score_head`).
The reference is the test oracle, the CPU path and the ONNX export path.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ScoreHeadOutput(NamedTuple):
    """Outputs of the score head; all fp32.

    probs: ``[N, K]`` distribution over the score values.
    mean: ``[N]`` expectation ``sum_k q_k v_k``.
    var: ``[N]`` variance ``sum_k q_k (v_k - mean)^2``.
    logprobs: ``[N, K]`` log of probs (computed stably), or ``None`` when not requested.
    """

    probs: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    logprobs: torch.Tensor | None = None


def score_head_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    values: torch.Tensor,
    temperature: float = 1.0,
    score_ids: torch.Tensor | None = None,
    return_logprobs: bool = False,
) -> ScoreHeadOutput:
    """PyTorch reference of the fused score head.

    Args:
        hidden: ``[N, H]`` hidden states at the answer positions (any float dtype).
        weight: ``[K, H]`` score-token rows, or the full ``[V, H]`` ``lm_head`` weight with ``score_ids``.
        values: ``[K]`` score values.
        temperature: softmax temperature (> 0).
        score_ids: ``[K]`` rows of ``weight`` to read, or ``None`` if ``weight`` is already ``[K, H]``.
        return_logprobs: also return ``log q`` (for the CE / KL losses).

    Returns:
        :class:`ScoreHeadOutput` with fp32 ``probs [N, K]``, ``mean [N]``, ``var [N]`` (and ``logprobs``).
    """
    if score_ids is not None:
        weight = weight.index_select(0, score_ids)
    logits = (hidden.float() @ weight.float().t()) / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    probs = logprobs.exp()
    v = values.to(device=probs.device, dtype=torch.float32)
    mean = probs @ v
    # centred form: E[v^2] - mu^2 cancels catastrophically for peaked distributions
    var = (probs * (v - mean.unsqueeze(-1)).square()).sum(-1)
    return ScoreHeadOutput(probs, mean, var, logprobs if return_logprobs else None)


def score_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    values: torch.Tensor,
    temperature: float = 1.0,
    score_ids: torch.Tensor | None = None,
    return_logprobs: bool = False,
) -> ScoreHeadOutput:
    """Fused score head (see the module docstring for the math); same arguments as :func:`score_head_ref`.

    Dispatch: the reference everywhere for now; the Triton kernel (issue 4) takes CUDA tensors.
    """
    return score_head_ref(hidden, weight, values, temperature, score_ids, return_logprobs)
