"""Losses and rewards of GDSO, RISD and the OPD / Bradley–Terry baselines, as pure tensor functions.

Every formula is docs/design.md §6 (paper: docs/method.md §3–§5). Notation: a training instance is a pair of
same-prompt images w, l with labels ``ŝ_w, ŝ_l`` on one rubric dimension; ``G`` teacher samples per
side give score distributions ``q_{j,i}`` over the K score values and expectations
``μ_{j,i} = Σ_s s q_{j,i}(s)``; ``j̄`` is the other side; ``R = S_max − S_min``
(:attr:`zreward_deploy.config.ScoreScale.range`).

Conventions, shared by every function here:

* Pairwise functions are batched over B pairs: ``mu_w, mu_l: [B, G]``, ``label_w, label_l: [B]``
  (any leading shape ``[...]`` works in place of ``[B]``).
* Sequence functions take ``[N, T]`` per-token log-probabilities of the sampled tokens and a ``[N, T]``
  token mask (bool, or 0/1). Masked positions may hold anything, NaN and inf included: they are replaced
  by 0 before any arithmetic, so they reach neither the value nor the gradient.
* Math runs in fp32 (fp64 inputs stay fp64, so ``torch.autograd.gradcheck`` works); fp16/bf16 inputs are
  upcast. Results are fp32 (or fp64) scalars.
* Means are over unmasked items only; when everything is masked the result is 0 (still attached to the
  graph, so ``backward()`` works and gives zero gradients), never NaN.
* Distributions are passed as log-probabilities (the score head returns them in fp32, computed stably by
  ``log_softmax``); target / teacher probabilities may contain exact zeros (``0 · log 0 = 0``).

Decisions where the paper leaves the formula open (docs/method.md §3):

* Advantage std: **population** std (``unbiased=False``) by default. It is defined for G = 1 (giving
  advantage 0 rather than 0/0), and it makes the normalised advantages of every group have mean 0 and
  RMS exactly 1 (up to ε) whatever G is. TRL uses the sample std; the two differ by the constant factor
  ``sqrt((G−1)/G)`` (0.94 at G = 8), i.e. only by a learning-rate rescale; ``unbiased=True`` gives TRL's.
  A group whose rewards are all equal gets advantage exactly 0 (tested by equality, not via ε).
* Policy-loss normalisation (``normalization=``): ``"sequence_mean"`` (default; GRPO / DeepSeekMath:
  mean over each sequence's valid tokens, then mean over sequences), ``"token_mean"`` (DAPO: sum over all
  valid tokens / their number), ``"sequence_sum"`` (the paper's Eq. 4 read literally: sum over tokens,
  no length normalisation, mean over sequences). The default weighs every sampled output equally, as the
  rewards, the CE term and the gap term do, and keeps the GRPO term's scale independent of the reasoning
  length, so the α weights of the direct losses keep their meaning when the teacher's outputs grow.
* Eq. 4 has no importance ratio; Algorithm 1 still samples from π_old and does K_gdso updates per batch,
  so :func:`policy_gradient_loss` uses the PPO clipped ratio (ε_low / ε_high) and the k3 KL estimator.
  With ``old_logp=None`` the ratio is 1 in value with the gradient of ``log π`` (on-policy), which
  together with ``normalization="sequence_sum"`` is Eq. 4 exactly (KL by the k3 estimator).
* The gap loss gets gradient through both sides' μ (the paper mentions no stop-gradient).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

Normalization = Literal["sequence_mean", "token_mean", "sequence_sum"]
NORMALIZATIONS: tuple[str, ...] = ("sequence_mean", "token_mean", "sequence_sum")

__all__ = [
    "NORMALIZATIONS",
    "GDSOLoss",
    "PolicyLoss",
    "bradley_terry_loss",
    "forward_kl_loss",
    "gdso_loss",
    "gdso_rewards",
    "group_advantages",
    "k3_kl",
    "opd_advantages",
    "opd_loss",
    "pairwise_reward",
    "pointwise_reward",
    "policy_gradient_loss",
    "preference_loss",
    "score_gap_loss",
    "soft_cross_entropy_loss",
]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """fp32 for every float dtype except fp64 (kept, so gradcheck can run in double precision)."""
    return x if x.dtype == torch.float64 else x.float()


def _as_float(x: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, device=like.device).to(like.dtype)


def _check_range(score_range: float) -> None:
    if not score_range > 0:
        raise ValueError(f"score_range (S_max - S_min) must be > 0, got {score_range}")


def _check_labels(mu: torch.Tensor, label: torch.Tensor, mu_name: str, label_name: str) -> None:
    if mu.dim() < 1 or label.shape != mu.shape[:-1]:
        raise ValueError(
            f"{label_name} must have the shape of {mu_name} without its last (sample) dim: "
            f"{mu_name} {tuple(mu.shape)}, {label_name} {tuple(label.shape)}"
        )


def _check_tokens(mask: torch.Tensor, **tensors: torch.Tensor | None) -> torch.Tensor:
    """Check ``[N, T]`` shapes against the mask and return the mask as bool."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be [N, T], got shape {tuple(mask.shape)}")
    for name, t in tensors.items():
        if t is not None and t.shape != mask.shape:
            raise ValueError(f"{name} must have the mask's shape {tuple(mask.shape)}, got {tuple(t.shape)}")
    return mask.bool()


def _masked(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # torch.where (not x * mask): a NaN/inf in a padded position must not become NaN = inf * 0, and
    # replacing the input (not only the output) keeps NaN out of the backward pass too.
    return torch.where(valid, _upcast(x), torch.zeros((), dtype=_upcast(x).dtype, device=x.device))


def _aggregate(per_token: torch.Tensor, valid: torch.Tensor, normalization: str) -> torch.Tensor:
    """Reduce a ``[N, T]`` per-token loss (already 0 at masked positions) to a scalar."""
    n_tokens = valid.sum(-1)  # [N]
    seq_sum = per_token.sum(-1)  # [N]
    if normalization == "token_mean":
        return seq_sum.sum() / n_tokens.sum().clamp(min=1)
    if normalization == "sequence_mean":
        per_seq = seq_sum / n_tokens.clamp(min=1)
    elif normalization == "sequence_sum":
        per_seq = seq_sum
    else:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    # sequences with no valid token are left out of the mean over sequences, not counted as 0
    return per_seq.sum() / (n_tokens > 0).sum().clamp(min=1)


def _masked_item_mean(per_item: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``per_item [...]`` over the items where ``mask [...]`` is true (all when ``None``)."""
    if mask is None:
        return per_item.mean() if per_item.numel() else per_item.sum()
    if mask.shape != per_item.shape:
        raise ValueError(f"mask must have shape {tuple(per_item.shape)}, got {tuple(mask.shape)}")
    valid = mask.bool()
    per_item = torch.where(valid, per_item, torch.zeros((), dtype=per_item.dtype, device=per_item.device))
    return per_item.sum() / valid.sum().clamp(min=1)


# --------------------------------------------------------------------------------------------------
# GDSO rewards and advantages (PAPER Eqs. 3, 7, 10, 13)
# --------------------------------------------------------------------------------------------------


def pointwise_reward(mu: torch.Tensor, label: torch.Tensor, score_range: float) -> torch.Tensor:
    """Pointwise reward ``r_pt = 1 − |μ_i − ŝ| / R`` (Eq. 7).

    1 at the label, falling linearly to 0 at a distance of R (the whole scale).

    Args:
        mu: ``[..., G]`` expectations of the G samples of one side.
        label: ``[...]`` that side's label ŝ.
        score_range: R = S_max − S_min (> 0).

    Returns:
        ``[..., G]`` rewards (fp32, or fp64 for fp64 input); differentiable in ``mu``.
    """
    _check_range(score_range)
    mu = _upcast(mu)
    label = _as_float(label, mu)
    _check_labels(mu, label, "mu", "label")
    return 1.0 - (mu - label.unsqueeze(-1)).abs() / score_range


def pairwise_reward(
    mu: torch.Tensor,
    mu_other: torch.Tensor,
    label: torch.Tensor,
    label_other: torch.Tensor,
    score_range: float,
) -> torch.Tensor:
    """Pairwise reward of side j against the other side j̄ (Eq. 10).

    ``r_pw_i = 1 − (1/(G·R)) Σ_k |(μ_i − μ̄_k) − (ŝ − ŝ̄)|``: each sample of this side is compared with
    every sample of the other side; 1 when every predicted gap equals the labelled gap.

    Args:
        mu: ``[..., G]`` this side's expectations μ_{j,i}.
        mu_other: ``[..., G']`` the other side's expectations μ_{j̄,k} (normally G' = G; the 1/G is the
            mean over the other side's samples).
        label: ``[...]`` this side's label ŝ_j.
        label_other: ``[...]`` the other side's label ŝ_j̄.
        score_range: R = S_max − S_min (> 0).

    Returns:
        ``[..., G]`` rewards of this side's samples.
    """
    _check_range(score_range)
    mu, mu_other = _upcast(mu), _upcast(mu_other)
    label, label_other = _as_float(label, mu), _as_float(label_other, mu)
    _check_labels(mu, label, "mu", "label")
    _check_labels(mu_other, label_other, "mu_other", "label_other")
    gap_error = _gap_error(mu, mu_other, label, label_other)  # [..., G, G']
    return 1.0 - gap_error.abs().mean(-1) / score_range


def _gap_error(
    mu: torch.Tensor, mu_other: torch.Tensor, label: torch.Tensor, label_other: torch.Tensor
) -> torch.Tensor:
    """``[..., G, G']``: ``(μ_i − μ̄_k) − (ŝ − ŝ̄)`` for every cross pair (i, k)."""
    predicted = mu.unsqueeze(-1) - mu_other.unsqueeze(-2)
    return predicted - (label - label_other)[..., None, None]


def gdso_rewards(
    mu_w: torch.Tensor,
    mu_l: torch.Tensor,
    label_w: torch.Tensor,
    label_l: torch.Tensor,
    *,
    score_range: float,
    lambda_pt: float,
    lambda_pw: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combined GDSO rewards ``r = λ_pt r_pt + λ_pw r_pw`` of both sides of B pairs (Eq. 13).

    Args:
        mu_w, mu_l: ``[B, G]`` expectations of the G samples of the w and the l image.
        label_w, label_l: ``[B]`` their labels.
        score_range: R = S_max − S_min.
        lambda_pt, lambda_pw: weights of the pointwise and the pairwise reward.

    Returns:
        ``(r_w, r_l)``, each ``[B, G]``. Normalise each side's group with :func:`group_advantages`
        (e.g. ``group_advantages(torch.stack([r_w, r_l], 1))`` → ``[B, 2, G]``).
    """
    r_w = lambda_pt * pointwise_reward(mu_w, label_w, score_range) + lambda_pw * pairwise_reward(
        mu_w, mu_l, label_w, label_l, score_range
    )
    r_l = lambda_pt * pointwise_reward(mu_l, label_l, score_range) + lambda_pw * pairwise_reward(
        mu_l, mu_w, label_l, label_w, score_range
    )
    return r_w, r_l


def group_advantages(rewards: torch.Tensor, *, eps: float = 1e-4, unbiased: bool = False) -> torch.Tensor:
    """Group-normalised advantages ``A_i = (r_i − mean_k r_k) / (std_k r_k + ε)`` (Eq. 3).

    The group is the last dim: the G samples of one input (one side of a pair). A group whose rewards
    are all equal gets exactly 0 (it carries no preference, and ``(r − mean)`` of equal floats is not
    always exactly 0 in floating point, which ε alone would turn into a small random advantage).

    Args:
        rewards: ``[..., G]`` rewards.
        eps: ε added to the std (TRL's 1e-4).
        unbiased: use the sample std (÷ (G − 1), TRL's choice) instead of the population std
            (÷ G, the default; see the module docstring). With G = 1 the sample std is undefined, so
            ``unbiased=True`` needs G ≥ 2.

    Returns:
        ``[..., G]`` advantages, per group of mean 0 (differentiable in ``rewards``; the policy losses
        detach them).
    """
    if rewards.dim() < 1 or rewards.shape[-1] < 1:
        raise ValueError(f"rewards must be [..., G] with G >= 1, got shape {tuple(rewards.shape)}")
    if unbiased and rewards.shape[-1] < 2:
        raise ValueError("unbiased=True (sample std) needs at least 2 samples per group")
    r = _upcast(rewards)
    centred = r - r.mean(-1, keepdim=True)
    std = r.std(-1, keepdim=True, unbiased=unbiased)
    advantages = centred / (std + eps)
    tied = r.amax(-1, keepdim=True) == r.amin(-1, keepdim=True)
    return torch.where(tied, torch.zeros((), dtype=r.dtype, device=r.device), advantages)


# --------------------------------------------------------------------------------------------------
# Policy-gradient loss (PAPER Eq. 4, as clipped GRPO)
# --------------------------------------------------------------------------------------------------


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of ``KL(π ‖ π_ref)``: ``exp(ref − logp) − (ref − logp) − 1``.

    Unbiased for the KL when the tokens are sampled from π, and ≥ 0 everywhere (``e^x ≥ 1 + x``), 0
    exactly where ``logp = ref_logp``. Its gradient in ``logp`` is ``1 − exp(ref − logp)``.

    Args:
        logp: ``[...]`` log π(y_t) of the sampled tokens under the policy.
        ref_logp: ``[...]`` log π_ref(y_t) of the same tokens (treated as given; not detached here).

    Returns:
        ``[...]`` per-token estimates (fp32, or fp64).
    """
    delta = _upcast(ref_logp) - _upcast(logp)
    return torch.expm1(delta) - delta


class PolicyLoss(NamedTuple):
    """Output of :func:`policy_gradient_loss` (all scalars).

    loss: the loss to minimise, ``policy + β · kl``.
    policy: the clipped policy-gradient term alone, aggregated like ``loss``.
    kl: the k3 KL to π_ref, aggregated like ``loss`` (0 when no ``ref_logp``); not multiplied by β.
    clip_fraction: fraction of valid tokens whose gradient the clip removed (detached; for logging).
    """

    loss: torch.Tensor
    policy: torch.Tensor
    kl: torch.Tensor
    clip_fraction: torch.Tensor


def policy_gradient_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    normalization: Normalization = "sequence_mean",
) -> PolicyLoss:
    """Clipped GRPO loss with a k3 KL penalty to a reference policy, over masked token sequences.

    Per valid token t of sequence n, with ``ρ = exp(logp − old_logp)`` and ``A = advantages[n]``::

        ℓ_nt = −min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high) A) + β · k3(logp, ref_logp)

    then reduced by ``normalization`` (see the module docstring): ``"sequence_mean"`` (default)
    ``= mean_n (1/T_n) Σ_t ℓ_nt``; ``"token_mean"`` ``= Σ_nt ℓ_nt / Σ_n T_n``; ``"sequence_sum"``
    ``= mean_n Σ_t ℓ_nt`` (Eq. 4 literally), where T_n is sequence n's number of valid tokens and the
    means over n skip sequences without valid tokens. As in PPO, the clip removes the gradient of a token
    when ρ > 1 + ε_high with A > 0, or ρ < 1 − ε_low with A < 0, and only then.

    Args:
        logp: ``[N, T]`` log π_θ(y_t | y_<t) of the sampled tokens (with gradient).
        advantages: ``[N]`` one advantage per sequence (or ``[N, T]`` per token); detached here.
        mask: ``[N, T]`` which tokens count (the reasoning tokens; not the prompt or padding).
        old_logp: ``[N, T]`` log π_old of the same tokens (the sampling policy); ``None`` = on-policy
            (ρ = 1 in value, gradient of log π). Detached here.
        ref_logp: ``[N, T]`` log π_ref of the same tokens; needed when ``beta > 0``. Detached here.
        beta: weight β of the KL to π_ref.
        eps_low, eps_high: clip range of the ratio (DAPO's "clip-higher" takes ε_high > ε_low).
        normalization: ``"sequence_mean"``, ``"token_mean"`` or ``"sequence_sum"``.

    Returns:
        :class:`PolicyLoss` of scalars; 0 (not NaN) when no token is valid.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"eps_low and eps_high must be >= 0, got {eps_low}, {eps_high}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (log-probs of the reference policy)")
    valid = _check_tokens(mask, logp=logp, old_logp=old_logp, ref_logp=ref_logp)
    adv = _upcast(advantages.detach())
    if adv.shape == valid.shape[:1]:
        adv = adv.unsqueeze(-1)
    elif adv.shape != valid.shape:
        raise ValueError(
            f"advantages must be [N] or [N, T] with [N, T] = {tuple(valid.shape)}, got {tuple(adv.shape)}"
        )
    adv = _masked(adv.expand(valid.shape), valid)

    logp = _masked(logp, valid)
    old = logp.detach() if old_logp is None else _masked(old_logp.detach(), valid)
    ratio = torch.exp(logp - old)
    clipped_ratio = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    policy = -torch.minimum(ratio * adv, clipped_ratio * adv)

    if ref_logp is not None:
        kl = torch.where(valid, k3_kl(logp, _masked(ref_logp.detach(), valid)), 0.0)
    else:
        kl = torch.zeros_like(policy)

    policy_term = _aggregate(policy, valid, normalization)
    kl_term = _aggregate(kl, valid, normalization)
    with torch.no_grad():
        clipped = ((ratio > 1.0 + eps_high) & (adv > 0)) | ((ratio < 1.0 - eps_low) & (adv < 0))
        clip_fraction = (clipped & valid).sum() / valid.sum().clamp(min=1)
    return PolicyLoss(policy_term + beta * kl_term, policy_term, kl_term, clip_fraction.to(policy.dtype))


# --------------------------------------------------------------------------------------------------
# Direct losses on the score distribution (PAPER Eqs. 8, 11, 12, 14)
# --------------------------------------------------------------------------------------------------


def soft_cross_entropy_loss(
    log_q: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft cross-entropy ``mean_items (−Σ_s t(s) log q(s))`` (the pointwise CE, Eq. 8).

    With one-hot targets this is the ordinary CE; with the two-hot targets of
    :meth:`~zreward_deploy.config.ScoreScale.soft_target` it is the paper's ``−log q(ŝ)`` for labels
    between two score values. GDSO's ``L_CE = −(1/2G) Σ_j Σ_i Σ_s t_j(s) log q_{j,i}(s)`` is this with
    ``log_q [B, 2, G, K]`` and ``target [B, 2, 1, K]`` (mean over the pairs as well).

    Args:
        log_q: ``[..., K]`` log-probabilities of the predicted distributions (e.g. the score head's
            ``logprobs``). May be −inf where the target is 0.
        target: ``[..., K]`` target distributions (rows sum to 1), broadcastable to ``log_q``.
        mask: optional ``[...]`` (the shape of ``log_q`` without K): which items count.

    Returns:
        Scalar mean over the (unmasked) items; 0 when all are masked.
    """
    log_q = _upcast(log_q)
    target = _as_float(target, log_q)
    try:
        target = target.expand_as(log_q)
    except RuntimeError as err:
        raise ValueError(
            f"target {tuple(target.shape)} does not broadcast to log_q {tuple(log_q.shape)}"
        ) from err
    # t · log q with t = 0 must be 0 even where log q = −inf (a score the model rules out)
    has_mass = target > 0
    safe_log_q = torch.where(has_mass, log_q, torch.zeros((), dtype=log_q.dtype, device=log_q.device))
    per_item = -(target * safe_log_q).sum(-1)
    return _masked_item_mean(per_item, mask)


def score_gap_loss(
    mu_w: torch.Tensor,
    mu_l: torch.Tensor,
    label_w: torch.Tensor,
    label_l: torch.Tensor,
    *,
    score_range: float,
) -> torch.Tensor:
    """L1 score-gap loss over all G×G cross pairs (Eq. 11), mean over the B pairs.

    ``L_gap = (1/(2G²R)) Σ_{j∈{w,l}} Σ_i Σ_k |(μ_{j,i} − μ_{j̄,k}) − (ŝ_j − ŝ_j̄)|``. The j = l term is
    the j = w term with i and k swapped and both signs flipped, so the two are equal and
    ``L_gap = (1/(G²R)) Σ_i Σ_k |(μ_{w,i} − μ_{l,k}) − (ŝ_w − ŝ_l)|``, the mean absolute gap error over
    the G×G cross pairs divided by R; that is what is computed. It also equals the mean of ``1 − r_pw``
    over both sides' samples. 0 when every predicted gap equals the labelled gap, whatever the absolute
    scores. Gradient flows into both sides.

    Args:
        mu_w, mu_l: ``[B, G]`` expectations of the samples of the w and the l image.
        label_w, label_l: ``[B]`` their labels.
        score_range: R = S_max − S_min (> 0).

    Returns:
        Scalar: the mean over the B pairs of their L_gap.
    """
    _check_range(score_range)
    mu_w, mu_l = _upcast(mu_w), _upcast(mu_l)
    label_w, label_l = _as_float(label_w, mu_w), _as_float(label_l, mu_w)
    _check_labels(mu_w, label_w, "mu_w", "label_w")
    _check_labels(mu_l, label_l, "mu_l", "label_l")
    return _gap_error(mu_w, mu_l, label_w, label_l).abs().mean() / score_range


def bradley_terry_loss(mu_w: torch.Tensor, mu_l: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry loss on expectations ``−log σ(μ_w − μ_l)``, mean over items (Eq. 12; ablation).

    Unlike :func:`score_gap_loss` it never reaches 0: it keeps pushing the margin wider. For all G×G
    cross pairs pass ``mu_w[..., :, None]`` and ``mu_l[..., None, :]``.

    Args:
        mu_w: ``[...]`` expectations of the preferred images.
        mu_l: ``[...]`` expectations of the other images (broadcastable with ``mu_w``).

    Returns:
        Scalar mean over the broadcast items.
    """
    margin = _upcast(mu_w) - _upcast(mu_l)
    # −log σ(x) = softplus(−x), stable for large |x|
    return F.softplus(-margin).mean()


def preference_loss(
    mu_a: torch.Tensor,
    mu_b: torch.Tensor,
    target: torch.Tensor | float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley–Terry loss of judgements with a soft target: the binary cross-entropy of
    P(a ≻ b) = σ(μ_a − μ_b) against t, ``−[t log σ(μ_a − μ_b) + (1 − t) log σ(μ_b − μ_a)]``, mean over the
    unmasked judgements.

    t = 1 ("a preferred") is :func:`bradley_terry_loss` with w = a; t = 0 the same with the sides
    swapped; t = 0.5 (a tie) is minimised at μ_a = μ_b, where it equals ln 2 (the BCE of a fair coin,
    its entropy), with gradient ``σ(Δ) − ½`` in Δ = μ_a − μ_b pulling the two together. Written with
    softplus (``−log σ(x) = softplus(−x)``), so it is stable for any margin.

    Args:
        mu_a, mu_b: ``[...]`` expectations of the two sides (differentiable; fp32 math).
        target: ``[...]`` (or a scalar) P(a ≻ b) as judged: 1, 0 or 0.5 (any value in [0, 1] works).
        mask: ``[...]`` bool, the judgements that count (default all).

    Returns:
        Scalar mean over the unmasked judgements; 0 (attached to the graph) when all are masked.
    """
    margin = _upcast(mu_a) - _upcast(mu_b)
    t = _as_float(target, margin).expand_as(margin)
    per_item = t * F.softplus(-margin) + (1 - t) * F.softplus(margin)
    return _masked_item_mean(per_item, mask)


class GDSOLoss(NamedTuple):
    """Output of :func:`gdso_loss` (scalars): the total and each unweighted term, for logging."""

    total: torch.Tensor
    grpo: torch.Tensor
    ce: torch.Tensor
    gap: torch.Tensor


def gdso_loss(
    grpo: torch.Tensor,
    *,
    log_q_w: torch.Tensor,
    log_q_l: torch.Tensor,
    target_w: torch.Tensor,
    target_l: torch.Tensor,
    mu_w: torch.Tensor,
    mu_l: torch.Tensor,
    label_w: torch.Tensor,
    label_l: torch.Tensor,
    score_range: float,
    alpha_pt: float,
    alpha_pw: float,
) -> GDSOLoss:
    """GDSO objective ``L = L_GRPO + α_pt L_CE + α_pw L_gap`` (Eq. 14) for B pairs.

    ``α_pt = α_pw = 0`` is the GRPO baseline. ``mu_*`` must be the expectations of ``log_q_*`` under the
    score values, and ``target_*`` the soft targets of ``label_*`` (the caller has both at hand; they are
    not recomputed here so that the values and the scale stay out of this function).

    Args:
        grpo: scalar L_GRPO (e.g. ``policy_gradient_loss(...).loss``).
        log_q_w, log_q_l: ``[B, G, K]`` log score distributions of the samples of each side.
        target_w, target_l: ``[B, K]`` soft targets t_w, t_l.
        mu_w, mu_l: ``[B, G]`` expectations.
        label_w, label_l: ``[B]`` labels.
        score_range: R = S_max − S_min.
        alpha_pt, alpha_pw: weights of the CE and the gap loss.

    Returns:
        :class:`GDSOLoss` ``(total, grpo, ce, gap)``; ``ce`` is
        ``−(1/2G) Σ_j Σ_i Σ_s t_j(s) log q_{j,i}(s)`` averaged over the pairs.
    """
    if log_q_w.shape != log_q_l.shape or log_q_w.dim() != 3:
        raise ValueError(
            f"log_q_w and log_q_l must both be [B, G, K], got {tuple(log_q_w.shape)}, {tuple(log_q_l.shape)}"
        )
    log_q = torch.stack([_upcast(log_q_w), _upcast(log_q_l)], dim=1)  # [B, 2, G, K]
    target = torch.stack([_upcast(target_w), _upcast(target_l)], dim=1).unsqueeze(2)  # [B, 2, 1, K]
    ce = soft_cross_entropy_loss(log_q, target)
    gap = score_gap_loss(mu_w, mu_l, label_w, label_l, score_range=score_range)
    grpo = _upcast(grpo)
    return GDSOLoss(grpo + alpha_pt * ce + alpha_pw * gap, grpo, ce, gap)


# --------------------------------------------------------------------------------------------------
# Distillation: RISD (PAPER Eq. 15) and the OPD baseline (§5)
# --------------------------------------------------------------------------------------------------


def forward_kl_loss(
    teacher_probs: torch.Tensor, student_log_q: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """RISD loss: forward ``KL(q_T ‖ q_φ) = Σ_s q_T(s) (log q_T(s) − log q_φ(s))``, mean over items.

    Summed over the K score values of each item, averaged over the items (for ``[N, K]`` inputs this is
    ``F.kl_div(student_log_q, teacher_probs, reduction="batchmean")``). Stable where the teacher puts
    no mass: ``0 · log 0 = 0``, and the student may be −inf there.

    Args:
        teacher_probs: ``[..., K]`` teacher distributions q_T (rows sum to 1; zeros allowed).
        student_log_q: ``[..., K]`` student log-probabilities log q_φ.
        mask: optional ``[...]``: which items count.

    Returns:
        Scalar mean over the (unmasked) items; ≥ 0, and 0 when the distributions are equal.
    """
    log_q = _upcast(student_log_q)
    p = _as_float(teacher_probs, log_q)
    if p.shape != log_q.shape:
        raise ValueError(
            f"teacher_probs {tuple(p.shape)} and student_log_q {tuple(log_q.shape)} must have one shape"
        )
    has_mass = p > 0
    zero = torch.zeros((), dtype=log_q.dtype, device=log_q.device)
    safe_log_q = torch.where(has_mass, log_q, zero)
    per_item = (torch.xlogy(p, p) - p * safe_log_q).sum(-1)
    return _masked_item_mean(per_item, mask)


def opd_advantages(
    teacher_logp: torch.Tensor, student_old_logp: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """OPD per-token advantages ``A_t = log π_T(y_t|y_<t) − log π_S,old(y_t|y_<t)``, stop-gradient.

    The per-token reverse-KL signal: positive where the teacher likes the student's token more than the
    student did. 0 when teacher = student, and 0 at masked positions.

    Args:
        teacher_logp: ``[N, T]`` teacher log-probs of the student's sampled tokens.
        student_old_logp: ``[N, T]`` log-probs of the same tokens under the sampling student π_S,old.
        mask: ``[N, T]`` which tokens count (the student's generated tokens).

    Returns:
        ``[N, T]`` advantages, detached.
    """
    valid = _check_tokens(mask, teacher_logp=teacher_logp, student_old_logp=student_old_logp)
    return (_masked(teacher_logp.detach(), valid) - _masked(student_old_logp.detach(), valid)).detach()


def opd_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """OPD loss ``−(1/T_n) Σ_t sg(A_t) log π_S(y_t|y_<t)``, mean over sequences.

    T_n is sequence n's number of valid tokens; sequences without any are skipped; 0 when none has.

    Args:
        logp: ``[N, T]`` log π_S of the sampled tokens under the current student (with gradient).
        advantages: ``[N, T]`` from :func:`opd_advantages` (detached here in any case).
        mask: ``[N, T]`` which tokens count.

    Returns:
        Scalar loss.
    """
    valid = _check_tokens(mask, logp=logp, advantages=advantages)
    per_token = -_masked(advantages.detach(), valid) * _masked(logp, valid)
    return _aggregate(per_token, valid, "sequence_mean")
