"""Analytic tests of training/losses.py: hand-computed values, known endpoints, gradients.

Every expected number below is worked out by hand in the comment beside it (or by an explicit loop
written from docs/design.md §6), never by the function under test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zreward_deploy.config import ScoreScale
from zreward_deploy.training.losses import (
    NORMALIZATIONS,
    bradley_terry_loss,
    forward_kl_loss,
    gdso_loss,
    gdso_rewards,
    group_advantages,
    k3_kl,
    opd_advantages,
    opd_loss,
    pairwise_reward,
    pointwise_reward,
    policy_gradient_loss,
    score_gap_loss,
    soft_cross_entropy_loss,
)

R = 4.0  # S_max − S_min of the 1..5 scale


def _t(values, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def _close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------------
# Rewards
# --------------------------------------------------------------------------------------------------


def test_pointwise_reward_is_one_at_label_and_falls_linearly():
    # label 3 on the 1..5 scale (R = 4): r = 1 − |μ − 3| / 4
    #   μ = 3 → 1; μ = 4 → 0.75; μ = 2 → 0.75; μ = 1 → 0.5; μ = 5 → 0.5; μ = 3.5 → 0.875
    mu = _t([[3.0, 4.0, 2.0, 1.0, 5.0, 3.5]])
    r = pointwise_reward(mu, _t([3.0]), R)
    _close(r, [[1.0, 0.75, 0.75, 0.5, 0.5, 0.875]])
    # linear on each side of the label: equal steps in μ give equal steps in r (second difference 0)
    above = pointwise_reward(torch.linspace(3.0, 5.0, 9)[None], _t([3.0]), R)[0]
    below = pointwise_reward(torch.linspace(1.0, 3.0, 9)[None], _t([3.0]), R)[0]
    _close(above.diff().diff(), torch.zeros(7))
    _close(below.diff().diff(), torch.zeros(7))
    _close(above.diff(), torch.full((8,), -0.25 / R))  # slope −1/R per unit of μ; steps of 0.25
    _close(below.diff(), torch.full((8,), 0.25 / R))


def test_pointwise_reward_batched_leading_dims():
    # [B=2, G=3]; labels [4.5, 1.0]
    # row 0: |4.5−4.5|=0 → 1; |3.5−4.5|=1 → .75; |5−4.5|=.5 → .875
    # row 1: |1−1|=0 → 1; |3−1|=2 → .5; |1.2−1|=.2 → .95
    mu = _t([[4.5, 3.5, 5.0], [1.0, 3.0, 1.2]])
    _close(pointwise_reward(mu, _t([4.5, 1.0]), R), [[1.0, 0.75, 0.875], [1.0, 0.5, 0.95]])


# Hand case shared by the pairwise tests: G = 2, R = 4, ŝ_w = 4, ŝ_l = 2 (Δ_w = +2, Δ_l = −2),
# μ_w = [4, 3], μ_l = [2, 3].
# w side, |(μ_w,i − μ_l,k) − 2|:  i=0: k0 |2−2|=0, k1 |1−2|=1 → Σ 1;  i=1: k0 |1−2|=1, k1 |0−2|=2 → Σ 3
# l side, |(μ_l,i − μ_w,k) + 2|:  i=0: k0 |−2+2|=0, k1 |−1+2|=1 → Σ 1;  i=1: k0 |−1+2|=1, k1 |0+2|=2 → Σ 3
# r_pw = 1 − Σ/(G·R) = 1 − Σ/8 → w: [0.875, 0.625], l: [0.875, 0.625]
# L_gap = (Σ over j,i,k) / (2 G² R) = (1+3+1+3) / (2·4·4) = 8/32 = 0.25
MU_W, MU_L, S_W, S_L = [[4.0, 3.0]], [[2.0, 3.0]], [4.0], [2.0]


def test_pairwise_reward_hand_case():
    r_w = pairwise_reward(_t(MU_W), _t(MU_L), _t(S_W), _t(S_L), R)
    r_l = pairwise_reward(_t(MU_L), _t(MU_W), _t(S_L), _t(S_W), R)
    _close(r_w, [[0.875, 0.625]])
    _close(r_l, [[0.875, 0.625]])


def test_pairwise_reward_is_one_when_gaps_match_even_if_scores_are_off():
    # every μ shifted by +0.7 from its label: pointwise error 0.7, every gap exact
    s_w, s_l = _t([4.5, 2.0, 3.0]), _t([2.5, 2.0, 5.0])
    mu_w = (s_w + 0.7)[:, None].expand(3, 4)
    mu_l = (s_l + 0.7)[:, None].expand(3, 4)
    _close(pairwise_reward(mu_w, mu_l, s_w, s_l, R), torch.ones(3, 4))
    _close(pairwise_reward(mu_l, mu_w, s_l, s_w, R), torch.ones(3, 4))
    _close(pointwise_reward(mu_w, s_w, R), torch.full((3, 4), 1 - 0.7 / 4))


def test_gdso_rewards_combine_pointwise_and_pairwise():
    # r_pt: w μ=[4,3], ŝ=4 → [1, .75]; l μ=[2,3], ŝ=2 → [1, .75]; r_pw from the hand case above.
    # λ_pt = 0.3, λ_pw = 0.7: w: [.3·1 + .7·.875, .3·.75 + .7·.625] = [.9125, .6625]; l the same.
    r_w, r_l = gdso_rewards(_t(MU_W), _t(MU_L), _t(S_W), _t(S_L), score_range=R, lambda_pt=0.3, lambda_pw=0.7)
    _close(r_w, [[0.9125, 0.6625]])
    _close(r_l, [[0.9125, 0.6625]])


def test_rewards_reject_bad_range_and_shapes():
    with pytest.raises(ValueError, match="score_range"):
        pointwise_reward(_t([[3.0]]), _t([3.0]), 0.0)
    with pytest.raises(ValueError, match="label"):
        pointwise_reward(_t([[3.0, 4.0]]), _t([3.0, 4.0]), R)
    with pytest.raises(ValueError, match="label_other"):
        pairwise_reward(_t([[3.0]]), _t([[3.0]]), _t([3.0]), _t([[3.0]]), R)


# --------------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------------


def test_group_advantages_hand_case_population_and_sample_std():
    # r = [1, 2, 3]: mean 2, centred [−1, 0, 1]
    # population std = sqrt((1+0+1)/3) = sqrt(2/3) → A = ±1/sqrt(2/3) = ±sqrt(1.5) = ±1.2247449
    # sample std = sqrt(2/2) = 1 → A = ±1
    r = _t([[1.0, 2.0, 3.0]], torch.float64)
    _close(group_advantages(r, eps=0.0), [[-math.sqrt(1.5), 0.0, math.sqrt(1.5)]], atol=1e-12)
    _close(group_advantages(r, eps=0.0, unbiased=True), [[-1.0, 0.0, 1.0]], atol=1e-12)
    # with ε: centred / (std + ε); population: −1 / (sqrt(2/3) + 0.5)
    _close(group_advantages(r, eps=0.5)[0, 0], -1.0 / (math.sqrt(2 / 3) + 0.5), atol=1e-12)


def test_group_advantages_zero_mean_and_unit_rms_per_group():
    torch.manual_seed(0)
    r = torch.rand(4, 2, 7, dtype=torch.float64)  # [B, 2 sides, G]
    a = group_advantages(r, eps=0.0)
    _close(a.mean(-1), torch.zeros(4, 2, dtype=torch.float64), atol=1e-12)
    _close(a.square().mean(-1), torch.ones(4, 2, dtype=torch.float64), atol=1e-12)
    # each group is normalised on its own: scaling one group's rewards leaves its advantages unchanged
    r2 = r.clone()
    r2[1, 0] = 10 * r2[1, 0] + 3
    _close(group_advantages(r2, eps=0.0), a, atol=1e-10)


def test_group_advantages_exactly_zero_when_rewards_tie():
    # 0.1 is not exactly representable; mean of seven float32 0.1s need not equal 0.1 bit for bit,
    # so the tie has to be caught explicitly for the advantage to be exactly 0.
    r = torch.stack([torch.full((7,), 0.1), torch.arange(7.0), torch.full((7,), -3.3)])
    a = group_advantages(r)
    assert torch.equal(a[0], torch.zeros(7))
    assert torch.equal(a[2], torch.zeros(7))
    assert a[1].abs().min() == 0 and a[1].abs().max() > 1  # the untied group is normalised
    # G = 1: population std is 0 and the single sample ties with itself
    assert torch.equal(group_advantages(_t([[0.7], [0.2]])), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="unbiased"):
        group_advantages(_t([[0.7]]), unbiased=True)


# --------------------------------------------------------------------------------------------------
# k3 KL and the policy-gradient loss
# --------------------------------------------------------------------------------------------------


def test_k3_kl_hand_values_nonnegative_and_zero_at_equality():
    # δ = ref − logp: k3 = e^δ − δ − 1; δ = 1 → e − 2; δ = −1 → 1/e; δ = 0 → 0
    logp = _t([-1.0, -1.0, -2.0], torch.float64)
    ref = _t([0.0, -2.0, -2.0], torch.float64)
    _close(k3_kl(logp, ref), [math.e - 2, 1 / math.e, 0.0], atol=1e-12)
    torch.manual_seed(1)
    a, b = -5 * torch.rand(1000), -5 * torch.rand(1000)
    assert (k3_kl(a, b) >= 0).all()
    assert torch.equal(k3_kl(a, a), torch.zeros(1000))


def _two_sequences():
    # N = 2, T = 3; sequence 0 has 3 valid tokens, sequence 1 has 1.
    logp = _t([[-0.5, -1.0, -2.0], [-0.3, -9.0, -9.0]], torch.float64)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    adv = _t([1.0, -2.0], torch.float64)
    return logp, mask, adv


def test_policy_loss_normalisation_modes_hand_values():
    logp, mask, adv = _two_sequences()
    # on-policy (ratio 1): per-token policy loss = −A → seq 0: [−1, −1, −1], seq 1: [2]
    # sequence_mean: mean(−3/3, 2/1) = 0.5; token_mean: (−3 + 2)/4 = −0.25; sequence_sum: (−3 + 2)/2 = −0.5
    expected = {"sequence_mean": 0.5, "token_mean": -0.25, "sequence_sum": -0.5}
    assert set(expected) == set(NORMALIZATIONS)
    for mode, value in expected.items():
        out = policy_gradient_loss(logp, adv, mask, normalization=mode)
        _close(out.loss, value, atol=1e-12)
        _close(out.policy, value, atol=1e-12)
        _close(out.kl, 0.0)
        # a third sequence with no valid token is left out of the mean over sequences, not counted as 0
        padded = policy_gradient_loss(
            torch.cat([logp, torch.zeros(1, 3, dtype=logp.dtype)]),
            torch.cat([adv, adv.new_tensor([5.0])]),
            torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)]),
            normalization=mode,
        )
        _close(padded.loss, value, atol=1e-12)
    # with a reference one nat above the policy on every token: k3 = e − 2 per token, β = 0.1
    # mean modes add β(e − 2); sequence_sum adds β · mean(3(e − 2), 1(e − 2)) = β · 2(e − 2)
    ref = logp + 1.0
    kl_scale = {"sequence_mean": 1.0, "token_mean": 1.0, "sequence_sum": 2.0}
    for mode, value in expected.items():
        out = policy_gradient_loss(logp, adv, mask, ref_logp=ref, beta=0.1, normalization=mode)
        _close(out.kl, kl_scale[mode] * (math.e - 2), atol=1e-12)
        _close(out.loss, value + 0.1 * kl_scale[mode] * (math.e - 2), atol=1e-12)


def test_policy_loss_default_is_sequence_mean():
    logp, mask, adv = _two_sequences()
    _close(policy_gradient_loss(logp, adv, mask).loss, 0.5, atol=1e-12)


def test_policy_loss_gradient_has_the_sign_of_the_advantage():
    # minimising the loss must raise log π of tokens with A > 0 and lower it for A < 0:
    # −∂L/∂logp has the sign of A, and masked tokens get no gradient.
    torch.manual_seed(2)
    logp = (-3 * torch.rand(3, 5)).requires_grad_()
    old = logp.detach() + 0.05 * torch.randn(3, 5)  # ratios inside the clip range
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    adv = _t([0.8, -1.5, 0.3])
    for mode in NORMALIZATIONS:
        (grad,) = torch.autograd.grad(
            policy_gradient_loss(logp, adv, mask, old_logp=old, normalization=mode).loss, logp
        )
        descent = -grad
        assert (torch.sign(descent[mask]) == torch.sign(adv[:, None].expand(3, 5)[mask])).all(), mode
        assert torch.equal(grad[~mask], torch.zeros(int((~mask).sum())))


def test_policy_loss_eq4_literal_gradient_is_minus_advantage_per_token():
    # old_logp=None + sequence_sum = Eq. 4: L = −mean_n A_n Σ_t log π → ∂L/∂logp_nt = −A_n / N_valid_seqs
    logp, mask, adv = _two_sequences()
    logp.requires_grad_()
    loss = policy_gradient_loss(logp, adv, mask, normalization="sequence_sum").loss
    (grad,) = torch.autograd.grad(loss, logp)
    _close(grad, [[-0.5, -0.5, -0.5], [1.0, 0.0, 0.0]], atol=1e-12)


@pytest.mark.parametrize(
    ("ratio", "advantage", "eps_high", "expected_grad"),
    [
        # one token, T = 1: L = −min(ρA, clip(ρ)A), ∂L/∂logp = ∂L/∂ρ · ρ
        (1.5, 1.0, 0.2, 0.0),  # A > 0, ρ > 1.2: clipped, min = 1.2 (const) → no gradient
        (1.5, -1.0, 0.2, 1.5),  # A < 0, ρ > 1.2: min(−1.5, −1.2) = −1.5 = ρA → L = ρ, grad = ρ = 1.5
        (0.5, -1.0, 0.2, 0.0),  # A < 0, ρ < 0.8: min(−0.5, −0.8) = −0.8 (const) → no gradient
        (0.5, 1.0, 0.2, -0.5),  # A > 0, ρ < 0.8: min(0.5, 0.8) = 0.5 = ρA → L = −ρ, grad = −0.5
        (1.1, 2.0, 0.2, -2.2),  # inside the range: L = −ρA, grad = −ρA = −2.2
        (1.25, 1.0, 0.2, 0.0),  # 1.25 > 1 + 0.2: clipped
        (1.25, 1.0, 0.28, -1.25),  # clip-higher: 1.25 < 1 + 0.28, not clipped, grad = −ρA
    ],
)
def test_policy_loss_clip_removes_gradient_where_ppo_says(ratio, advantage, eps_high, expected_grad):
    logp = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    old = torch.full((1, 1), -math.log(ratio), dtype=torch.float64)  # ρ = exp(0 − old) = ratio
    mask = torch.ones(1, 1, dtype=torch.bool)
    out = policy_gradient_loss(logp, _t([advantage], torch.float64), mask, old_logp=old, eps_high=eps_high)
    (grad,) = torch.autograd.grad(out.loss, logp)
    _close(grad, [[expected_grad]], atol=1e-12)
    _close(out.clip_fraction, 1.0 if expected_grad == 0.0 else 0.0)


def test_policy_loss_clip_fraction_hand_count():
    # 4 valid tokens, A = +1; ratios [1.5, 1.0, 0.5, 1.3] with ε = 0.2 → clipped where ρ > 1.2: 2 of 4
    logp = torch.zeros(1, 5)
    old = -torch.log(_t([[1.5, 1.0, 0.5, 1.3, 9.0]]))
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    _close(policy_gradient_loss(logp, _t([1.0]), mask, old_logp=old).clip_fraction, 0.5)


def test_policy_loss_all_masked_is_zero_and_padding_garbage_does_not_leak():
    logp, mask, adv = _two_sequences()
    for mode in NORMALIZATIONS:
        lp = logp.clone().requires_grad_()
        out = policy_gradient_loss(
            lp, adv, torch.zeros_like(mask), ref_logp=lp.detach() + 1, beta=0.1, normalization=mode
        )
        assert out.loss.item() == 0.0 and out.kl.item() == 0.0 and out.clip_fraction.item() == 0.0
        (grad,) = torch.autograd.grad(out.loss, lp)
        assert torch.equal(grad, torch.zeros_like(grad))
    # NaN / inf in padded positions: same loss and gradient as with clean padding
    dirty = logp.clone()
    dirty[~mask] = float("nan")
    old = logp.clone() - 0.1
    old[~mask] = float("inf")
    ref = logp.clone() + 0.3
    ref[~mask] = -float("inf")
    clean_lp, dirty_lp = logp.clone().requires_grad_(), dirty.clone().requires_grad_()
    clean = policy_gradient_loss(clean_lp, adv, mask, old_logp=logp - 0.1, ref_logp=logp + 0.3, beta=0.2)
    messy = policy_gradient_loss(dirty_lp, adv, mask, old_logp=old, ref_logp=ref, beta=0.2)
    _close(messy.loss, clean.loss.item(), atol=1e-12)
    g_clean = torch.autograd.grad(clean.loss, clean_lp)[0]
    g_dirty = torch.autograd.grad(messy.loss, dirty_lp)[0]
    assert torch.isfinite(g_dirty).all()
    _close(g_dirty, g_clean, atol=1e-12)


def test_policy_loss_gradcheck_float64():
    torch.manual_seed(3)
    logp = (-2 * torch.rand(3, 4, dtype=torch.float64)).requires_grad_()
    old = logp.detach() + 0.05 * torch.randn(3, 4, dtype=torch.float64)  # well inside the clip range
    ref = logp.detach() + 0.5 * torch.randn(3, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    adv = torch.randn(3, dtype=torch.float64)
    for mode in NORMALIZATIONS:
        assert torch.autograd.gradcheck(
            lambda lp, mode=mode: (
                policy_gradient_loss(
                    lp, adv, mask, old_logp=old, ref_logp=ref, beta=0.3, normalization=mode
                ).loss
            ),
            (logp,),
        )


def test_policy_loss_per_token_advantages_and_validation():
    logp, mask, adv = _two_sequences()
    per_token = adv[:, None].expand(2, 3)
    _close(policy_gradient_loss(logp, per_token, mask).loss, 0.5, atol=1e-12)
    with pytest.raises(ValueError, match="normalization"):
        policy_gradient_loss(logp, adv, mask, normalization="mean")
    with pytest.raises(ValueError, match="ref_logp"):
        policy_gradient_loss(logp, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="advantages"):
        policy_gradient_loss(logp, adv[:1], mask)
    with pytest.raises(ValueError, match="old_logp"):
        policy_gradient_loss(logp, adv, mask, old_logp=logp[:, :2])


def test_policy_loss_advantages_get_no_gradient():
    logp, mask, adv = _two_sequences()
    adv = adv.clone().requires_grad_()
    lp = logp.clone().requires_grad_()
    policy_gradient_loss(lp, adv, mask).loss.backward()
    assert adv.grad is None and lp.grad is not None


# --------------------------------------------------------------------------------------------------
# Soft CE, gap loss, Bradley–Terry, GDSO total
# --------------------------------------------------------------------------------------------------


def test_soft_ce_equals_standard_ce_for_one_hot_targets():
    torch.manual_seed(4)
    logits = torch.randn(3, 5, 9)  # odd leading dims, K = 9 (half-point scale)
    labels = torch.randint(0, 9, (3, 5))
    log_q = torch.log_softmax(logits, -1)
    expected = F.cross_entropy(logits.reshape(-1, 9), labels.reshape(-1))
    _close(soft_cross_entropy_loss(log_q, F.one_hot(labels, 9).float()), expected.item(), atol=1e-5)


def test_soft_ce_two_hot_hand_value_and_zero_target_mass():
    # label 3.5 on the 1..5 scale → target 0.5 on "3", 0.5 on "4"
    # q = [.1, .1, .2, .3, .3] → CE = −(.5 ln .2 + .5 ln .3) = .5 (1.6094379 + 1.2039728) = 1.4067054
    target = ScoreScale().soft_target(3.5)
    _close(target, [0.0, 0.0, 0.5, 0.5, 0.0])
    log_q = torch.log(_t([0.1, 0.1, 0.2, 0.3, 0.3]))
    _close(soft_cross_entropy_loss(log_q[None], target[None]), 1.4067054, atol=1e-6)
    # a score the model rules out (log q = −inf) where the target is 0 costs nothing
    log_q_inf = _t(
        [-float("inf"), -float("inf"), math.log(0.5), math.log(0.5), -float("inf")]
    ).requires_grad_()
    loss = soft_cross_entropy_loss(log_q_inf[None], target[None])
    _close(loss, math.log(2))  # −(.5 ln .5 + .5 ln .5) = ln 2
    loss.backward()
    _close(log_q_inf.grad, [0.0, 0.0, -0.5, -0.5, 0.0])


def test_soft_ce_mask_broadcast_and_all_masked():
    # items: CE 1 = −ln(.5) on q=[.5,.5] target [1,0]; CE 2 = −ln(.25) on q=[.25,.75] target [1,0]
    log_q = torch.log(_t([[0.5, 0.5], [0.25, 0.75]])).requires_grad_()
    target = _t([1.0, 0.0])  # broadcast over the two items
    _close(soft_cross_entropy_loss(log_q, target), (math.log(2) + math.log(4)) / 2)
    _close(soft_cross_entropy_loss(log_q, target, mask=torch.tensor([False, True])), math.log(4))
    zero = soft_cross_entropy_loss(log_q, target, mask=torch.tensor([False, False]))
    assert zero.item() == 0.0
    zero.backward()
    assert torch.equal(log_q.grad, torch.zeros(2, 2))


def test_soft_ce_gradcheck_and_fp32_compute_for_bf16_inputs():
    torch.manual_seed(5)
    log_q = torch.log_softmax(torch.randn(4, 5, dtype=torch.float64), -1).requires_grad_()
    target = torch.softmax(torch.randn(4, 5, dtype=torch.float64), -1)
    assert torch.autograd.gradcheck(lambda x: soft_cross_entropy_loss(x, target), (log_q,))
    low = log_q.detach().to(torch.bfloat16)
    out = soft_cross_entropy_loss(low, target.float())
    assert out.dtype == torch.float32
    _close(out, -(target.float() * low.float()).sum(-1).mean().item(), atol=1e-6)


def test_score_gap_loss_hand_case_and_identity_with_pairwise_reward():
    _close(score_gap_loss(_t(MU_W), _t(MU_L), _t(S_W), _t(S_L), score_range=R), 0.25)  # see the hand case
    # mean(1 − r_pw) over both sides' samples: mean(.125, .375, .125, .375) = 0.25
    torch.manual_seed(6)
    mu_w, mu_l = 1 + 4 * torch.rand(3, 5), 1 + 4 * torch.rand(3, 5)
    s_w, s_l = 1 + 4 * torch.rand(3), 1 + 4 * torch.rand(3)
    r_w = pairwise_reward(mu_w, mu_l, s_w, s_l, R)
    r_l = pairwise_reward(mu_l, mu_w, s_l, s_w, R)
    _close(
        score_gap_loss(mu_w, mu_l, s_w, s_l, score_range=R), torch.cat([1 - r_w, 1 - r_l], 1).mean().item()
    )


def test_score_gap_loss_matches_explicit_loop_over_j_i_k():
    torch.manual_seed(7)
    B, G = 3, 5
    mu = {
        "w": 1 + 4 * torch.rand(B, G, dtype=torch.float64),
        "l": 1 + 4 * torch.rand(B, G, dtype=torch.float64),
    }
    s = {"w": 1 + 4 * torch.rand(B, dtype=torch.float64), "l": 1 + 4 * torch.rand(B, dtype=torch.float64)}
    other = {"w": "l", "l": "w"}
    per_pair = []
    for b in range(B):
        total = 0.0
        for j in ("w", "l"):
            jb = other[j]
            for i in range(G):
                for k in range(G):
                    gap = (mu[j][b, i] - mu[jb][b, k]) - (s[j][b] - s[jb][b])
                    total += abs(gap.item())
        per_pair.append(total / (2 * G**2 * R))  # Eq. 11's normalisation, literally
    expected = sum(per_pair) / B
    _close(score_gap_loss(mu["w"], mu["l"], s["w"], s["l"], score_range=R), expected, atol=1e-12)


def test_score_gap_loss_zero_when_gaps_match_and_gradients_reach_both_sides():
    s_w, s_l = _t([4.5, 3.0]), _t([2.0, 3.0])
    mu_w = (s_w - 0.4)[:, None].expand(2, 3).clone()
    mu_l = (s_l - 0.4)[:, None].expand(2, 3).clone()
    assert score_gap_loss(mu_w, mu_l, s_w, s_l, score_range=R).item() == 0.0
    torch.manual_seed(8)
    mu_w = (1 + 4 * torch.rand(2, 3, dtype=torch.float64)).requires_grad_()
    mu_l = (1 + 4 * torch.rand(2, 3, dtype=torch.float64)).requires_grad_()
    s_w64, s_l64 = s_w.double(), s_l.double()
    assert torch.autograd.gradcheck(
        lambda a, b: score_gap_loss(a, b, s_w64, s_l64, score_range=R), (mu_w, mu_l)
    )
    assert torch.autograd.gradcheck(lambda a, b: pairwise_reward(a, b, s_w64, s_l64, R), (mu_w, mu_l))
    assert torch.autograd.gradcheck(lambda a: pointwise_reward(a, s_w64, R), (mu_w,))


def test_bradley_terry_hand_values_and_gradient():
    # −log σ(0) = ln 2; −log σ(2) = ln(1 + e^−2) = 0.126928; −log σ(−2) = ln(1 + e^2) = 2.126928
    _close(bradley_terry_loss(_t([3.0]), _t([3.0])), math.log(2))
    _close(bradley_terry_loss(_t([4.0, 2.0]), _t([2.0, 4.0])), (0.126928 + 2.126928) / 2, atol=1e-6)
    # never 0 and still pushing: the gradient in μ_w stays negative at a margin of 30 (no overflow)
    mu_w = _t([33.0], torch.float64).requires_grad_()
    loss = bradley_terry_loss(mu_w, _t([3.0], torch.float64))
    loss.backward()
    assert loss.item() > 0 and mu_w.grad.item() < 0 and torch.isfinite(loss)
    torch.manual_seed(9)
    a, b = torch.randn(2, 3, 1, dtype=torch.float64), torch.randn(2, 1, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(bradley_terry_loss, (a.requires_grad_(), b.requires_grad_()))


def test_gdso_loss_total_and_terms():
    # B = 1, G = 2, K = 5; the μ / labels of the pairwise hand case → gap = 0.25.
    # q uniform for every sample, one-hot targets → CE = −ln(1/5) = ln 5 for every sample → ce = ln 5.
    # total = grpo + α_pt ce + α_pw gap = 0.4 + 0.5 ln 5 + 2 · 0.25
    log_q = torch.full((1, 2, 5), -math.log(5))
    target_w, target_l = ScoreScale().soft_target([4.0]), ScoreScale().soft_target([2.0])
    out = gdso_loss(
        _t(0.4),
        log_q_w=log_q,
        log_q_l=log_q,
        target_w=target_w,
        target_l=target_l,
        mu_w=_t(MU_W),
        mu_l=_t(MU_L),
        label_w=_t(S_W),
        label_l=_t(S_L),
        score_range=R,
        alpha_pt=0.5,
        alpha_pw=2.0,
    )
    _close(out.ce, math.log(5))
    _close(out.gap, 0.25)
    _close(out.grpo, 0.4)
    _close(out.total, 0.4 + 0.5 * math.log(5) + 2 * 0.25)


def test_gdso_ce_is_the_half_g_normalised_sum():
    # L_CE = −(1/2G) Σ_j Σ_i Σ_s t_j(s) log q_{j,i}(s), per pair, mean over pairs; explicit loop
    torch.manual_seed(10)
    B, G, K = 2, 3, 5
    log_q_w = torch.log_softmax(torch.randn(B, G, K, dtype=torch.float64), -1)
    log_q_l = torch.log_softmax(torch.randn(B, G, K, dtype=torch.float64), -1)
    t_w = torch.softmax(torch.randn(B, K, dtype=torch.float64), -1)
    t_l = torch.softmax(torch.randn(B, K, dtype=torch.float64), -1)
    expected = 0.0
    for b in range(B):
        total = 0.0
        for log_q, t in ((log_q_w, t_w), (log_q_l, t_l)):
            for i in range(G):
                for s in range(K):
                    total -= (t[b, s] * log_q[b, i, s]).item()
        expected += total / (2 * G) / B
    zeros = torch.zeros(B, G, dtype=torch.float64)
    out = gdso_loss(
        torch.zeros((), dtype=torch.float64),
        log_q_w=log_q_w,
        log_q_l=log_q_l,
        target_w=t_w,
        target_l=t_l,
        mu_w=zeros,
        mu_l=zeros,
        label_w=torch.zeros(B),
        label_l=torch.zeros(B),
        score_range=R,
        alpha_pt=1.0,
        alpha_pw=0.0,
    )
    _close(out.ce, expected, atol=1e-12)
    _close(out.total, expected, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# RISD forward KL and OPD
# --------------------------------------------------------------------------------------------------


def test_forward_kl_matches_torch_kl_div_batchmean():
    torch.manual_seed(11)
    p = torch.softmax(torch.randn(7, 9), -1)
    log_q = torch.log_softmax(torch.randn(7, 9), -1)
    expected = F.kl_div(log_q, p, reduction="batchmean")
    _close(forward_kl_loss(p, log_q), expected.item(), atol=1e-6)
    # leading dims [3, 4]: mean over all 12 items (batchmean of the flattened items)
    p3 = torch.softmax(torch.randn(3, 4, 5), -1)
    log_q3 = torch.log_softmax(torch.randn(3, 4, 5), -1)
    expected3 = F.kl_div(log_q3.reshape(12, 5), p3.reshape(12, 5), reduction="batchmean")
    _close(forward_kl_loss(p3, log_q3), expected3.item(), atol=1e-6)


def test_forward_kl_zero_when_equal_and_nonnegative():
    torch.manual_seed(12)
    log_q = torch.log_softmax(torch.randn(6, 5, dtype=torch.float64), -1)
    assert abs(forward_kl_loss(log_q.exp(), log_q).item()) < 1e-12
    p = torch.softmax(3 * torch.randn(100, 5), -1)
    per_item_mask = torch.eye(100, dtype=torch.bool)  # one item at a time
    other = torch.log_softmax(torch.randn(100, 5), -1)
    assert all(forward_kl_loss(p, other, mask=per_item_mask[n]).item() >= 0 for n in range(0, 100, 9))


def test_forward_kl_teacher_zeros_hand_value():
    # p = [0, .5, .5], q = [.25, .25, .5] → .5 ln(.5/.25) + .5 ln(.5/.5) + 0 = .5 ln 2
    p = _t([[0.0, 0.5, 0.5]])
    _close(forward_kl_loss(p, torch.log(_t([[0.25, 0.25, 0.5]]))), 0.5 * math.log(2))
    # student rules out the score the teacher rules out: finite, gradient finite and 0 there
    log_q = _t([[-float("inf"), math.log(0.5), math.log(0.5)]]).requires_grad_()
    loss = forward_kl_loss(p, log_q)
    assert loss.item() == 0.0
    loss.backward()
    _close(log_q.grad, [[0.0, -0.5, -0.5]])


def test_forward_kl_mask_gradcheck_and_all_masked():
    torch.manual_seed(13)
    p = torch.softmax(torch.randn(4, 5, dtype=torch.float64), -1)
    log_q = torch.log_softmax(torch.randn(4, 5, dtype=torch.float64), -1).requires_grad_()
    mask = torch.tensor([True, False, True, True])
    assert torch.autograd.gradcheck(lambda x: forward_kl_loss(p, x, mask=mask), (log_q,))
    # masked mean = mean of the per-item KLs of items 0, 2, 3 (per-item KL from torch's kl_div)
    per_item = F.kl_div(log_q.detach(), p, reduction="none").sum(-1)
    _close(forward_kl_loss(p, log_q, mask=mask), per_item[mask].mean().item(), atol=1e-12)
    zero = forward_kl_loss(p, log_q, mask=torch.zeros(4, dtype=torch.bool))
    assert zero.item() == 0.0


def test_opd_advantages_zero_when_teacher_equals_student_and_hand_values():
    torch.manual_seed(14)
    student = -3 * torch.rand(2, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(opd_advantages(student, student, mask), torch.zeros(2, 4))
    # A = log π_T − log π_S,old: [−1 − (−2), −3 − (−1)] = [1, −2]; padding → 0 even if NaN
    teacher = _t([[-1.0, -3.0, float("nan")]], torch.float64).requires_grad_()
    old = _t([[-2.0, -1.0, 0.0]], torch.float64)
    a = opd_advantages(teacher, old, torch.tensor([[True, True, False]]))
    _close(a, [[1.0, -2.0, 0.0]])
    assert not a.requires_grad


def test_opd_loss_hand_value_gradient_and_all_masked():
    # sequence 0: A = [1, −1], log π = [−0.5, −2] → −(1·−0.5 + (−1)·(−2)) / 2 = −(−0.5 + 2)/2 = −0.75
    # sequence 1: A = [2], log π = [−1] (second token masked) → −(2 · −1)/1 = 2
    # mean over sequences: (−0.75 + 2)/2 = 0.625; ∂/∂logp = −A / (T_n · N) → [[−.25, .25], [−1, 0]]
    logp = _t([[-0.5, -2.0], [-1.0, 5.0]], torch.float64).requires_grad_()
    adv = _t([[1.0, -1.0], [2.0, 7.0]], torch.float64).requires_grad_()
    mask = torch.tensor([[True, True], [True, False]])
    loss = opd_loss(logp, adv, mask)
    _close(loss, 0.625, atol=1e-12)
    loss.backward()
    _close(logp.grad, [[-0.25, 0.25], [-1.0, 0.0]], atol=1e-12)
    assert adv.grad is None  # stop-gradient on the advantage
    zero = opd_loss(logp, adv, torch.zeros_like(mask))
    assert zero.item() == 0.0
    assert torch.autograd.gradcheck(
        lambda lp: opd_loss(lp, adv.detach(), mask), (logp.detach().requires_grad_(),)
    )
