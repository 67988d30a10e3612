"""DRaFT-K / ReFL on a tiny UNet with the tiny scorer as the reward (zreward_deploy/refl/finetune.py,
sampler.py, reward.py): the gradient is the reward's, it reaches the UNet through the sampler, a step
raises the reward, the regulariser pulls towards the reference, and checkpointing changes nothing."""

import copy

import pytest
import torch

from zreward_deploy.errors import ZRewardInputError
from zreward_deploy.refl import FinetuneConfig, RewardFinetuner, ScorerReward, clean_estimate, sample_latents
from zreward_deploy.refl.finetune import kl_regulariser
from zreward_deploy.refl.sampler import StepRecord, guided_prediction

from .helpers import make_scheduler, make_unet

PROMPTS = ["two red circles", "a blue square on the left"]
STEPS = 4


def smooth_decode(latents):
    # sigmoid instead of the clamp: no pixel saturates, so finite differences see a smooth reward
    return torch.sigmoid(latents)


def noise(seed=1, n=2, shape=(3, 8, 8)):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def finetuner(unet, scorer, encode, **cfg):
    config = FinetuneConfig(num_inference_steps=STEPS, dimensions=["realism"], **{"reg": "none", **cfg})
    return RewardFinetuner(unet, make_scheduler(), scorer, encode, config=config, decode=smooth_decode)


def reward_of(ft, z):
    with torch.no_grad():
        images = ft.generate(PROMPTS, z)
        return float(ft.reward(images, PROMPTS).mean())


def flat_grad(params):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])


def set_params(params, vector):
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(vector[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def test_full_backprop_gradient_matches_finite_differences(unet, scorer, encode):
    # K = all steps: the gradient through the sampler is exact, so the directional derivative along it
    # must equal the central finite difference of the reward itself
    ft = finetuner(unet, scorer, encode, k=STEPS)
    z = noise()
    loss, _ = ft.loss(PROMPTS, z)
    loss.backward()
    g = -flat_grad(ft.params)  # the reward's gradient (loss = -mean R)
    assert g.norm() > 0
    direction = g / g.norm()
    theta = torch.cat([p.detach().flatten() for p in ft.params])
    eps = 1e-2
    set_params(ft.params, theta + eps * direction)
    up = reward_of(ft, z)
    set_params(ft.params, theta - eps * direction)
    down = reward_of(ft, z)
    set_params(ft.params, theta)
    fd = (up - down) / (2 * eps)
    assert fd > 0
    assert fd == pytest.approx(float(g.norm()), rel=0.05)


@pytest.mark.parametrize("method", ["draft", "refl"])
def test_one_step_raises_the_reward(unet, scorer, encode, method):
    z = noise()
    ft = finetuner(unet, scorer, encode, k=1, method=method)
    ft.optimizer = torch.optim.SGD(ft.params, lr=0.5)
    before = reward_of(ft, z)
    ft.optimizer.zero_grad()
    loss, parts = ft.loss(PROMPTS, z, stop_index=STEPS - 2 if method == "refl" else None)
    loss.backward()
    ft.optimizer.step()
    after = reward_of(ft, z)
    # ReFL's gradient is that of the clean estimate at step STEPS - 2, not of the final sample, yet both
    # methods' steps move the parameters up the reward of the sampler's output
    assert after > before
    assert parts["reward"] == pytest.approx(before, abs=1e-5) if method == "draft" else True


def test_gradients_reach_the_unet_through_the_sampler(unet, encode):
    scheduler = make_scheduler()
    z = noise()
    cond = encode(PROMPTS)
    grads = {}
    for k in (1, 2):
        unet.zero_grad(set_to_none=True)
        out = sample_latents(unet, scheduler, z, cond, STEPS, grad_steps=k)
        assert len(out.steps) == k
        out.latents.square().mean().backward()
        grads[k] = unet.conv_in.weight.grad.clone()
        assert grads[k].abs().sum() > 0  # the first layer of the UNet
    # K = 2 adds the path through the second-to-last call and the scheduler's step after it
    assert not torch.allclose(grads[1], grads[2])
    unet.zero_grad(set_to_none=True)
    out = sample_latents(unet, scheduler, z, cond, STEPS, grad_steps=0)
    assert out.latents.grad_fn is None and not out.steps
    assert all(p.grad is None for p in unet.parameters())


def test_refl_returns_the_schedulers_clean_estimate(unet, encode):
    scheduler = make_scheduler()
    z = noise()
    cond = encode(PROMPTS)
    out = sample_latents(unet, scheduler, z, cond, STEPS, stop_at=1)
    assert [s.index for s in out.steps] == [1]
    step = out.steps[0]
    # v-prediction: x0 = sqrt(a) x_t - sqrt(1 - a) v with a = alphas_cumprod[t], written out here
    a = scheduler.alphas_cumprod[int(step.timestep)]
    expected = a.sqrt() * step.latents - (1 - a).sqrt() * step.prediction
    torch.testing.assert_close(out.latents, expected)
    torch.testing.assert_close(
        clean_estimate(scheduler, step.latents, step.prediction, step.timestep, 1), expected
    )
    out.latents.sum().backward()
    assert unet.conv_in.weight.grad.abs().sum() > 0


def test_flow_matching_scheduler_trains_and_refuses_kl(unet, scorer, encode):
    scheduler = make_scheduler("flow")
    cfg = FinetuneConfig(num_inference_steps=3, k=1, reg="l2", dimensions=["realism"])
    ft = RewardFinetuner(unet, scheduler, scorer, encode, config=cfg, decode=smooth_decode)
    stats = ft.step(PROMPTS, noise())
    assert stats.grad_norm > 0
    # flow matching's clean estimate: x_t - sigma v
    x, v = noise(2), noise(3)
    scheduler.set_timesteps(3)
    torch.testing.assert_close(
        clean_estimate(scheduler, x, v, scheduler.timesteps[1], 1), x - scheduler.sigmas[1] * v
    )
    with pytest.raises(ZRewardInputError, match="DDPM-family"):
        RewardFinetuner(
            unet, scheduler, scorer, encode, config=FinetuneConfig(num_inference_steps=3, reg="kl")
        )


def test_l2_regulariser_is_zero_at_the_reference_and_pulls_back(unet, encode):
    zero_reward = lambda images, prompts: images.sum(dim=(1, 2, 3)) * 0.0  # noqa: E731
    cfg = FinetuneConfig(num_inference_steps=STEPS, k=2, reg="l2", reg_weight=1.0, max_grad_norm=0)
    ft = RewardFinetuner(unet, make_scheduler(), zero_reward, encode, config=cfg, decode=smooth_decode)
    z = noise()
    loss, parts = ft.loss(PROMPTS, z)
    loss.backward()
    assert parts["reg"] == 0.0
    assert flat_grad(ft.params).abs().max() == 0.0
    with torch.no_grad():  # move the trained copy away from the frozen reference
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    ft.optimizer = torch.optim.SGD(ft.params, lr=0.05)
    regs = [ft.step(PROMPTS, z).reg for _ in range(3)]
    assert regs[0] > 0 and regs[2] < regs[0]


def test_kl_regulariser_by_hand():
    # one epsilon-prediction step from t = 999 to t = 499 on a hand-made schedule:
    # KL = |Δμ|² / (2 β'), β' = 1 - a_t / a_prev, Δμ = sqrt(a_prev) β' / (1 - a_t) · (-sqrt(1 - a_t) / sqrt(a_t)) Δε
    class Schedule:
        alphas_cumprod = torch.linspace(0.999, 0.01, 1000)
        timesteps = torch.tensor([999, 499])

        class config:
            prediction_type = "epsilon"

    a_t, a_prev = 0.01, float(Schedule.alphas_cumprod[499])
    beta = 1 - a_t / a_prev
    diff = torch.full((2, 3, 2, 2), 0.1)
    record = StepRecord(0, torch.tensor(999), torch.zeros(2, 3, 2, 2), diff, torch.zeros_like(diff))
    coefficient = (a_prev**0.5 * beta / (1 - a_t) * (1 - a_t) ** 0.5 / a_t**0.5) ** 2 / (2 * beta)
    expected = coefficient * 12 * 0.1**2  # 12 elements per item, mean over the batch
    assert float(kl_regulariser([record], Schedule())) == pytest.approx(expected, rel=1e-5)


def test_checkpointing_gives_the_same_gradients(scorer, encode):
    grads = []
    for ckpt in (False, True):
        unet = make_unet()
        ft = finetuner(unet, scorer, encode, k=2, reg="l2", grad_checkpointing=ckpt)
        with torch.no_grad():
            for p in unet.parameters():  # away from the reference, so the regulariser has a gradient
                p.add_(0.01)
        loss, _ = ft.loss(PROMPTS, noise())
        loss.backward()
        grads.append(flat_grad(ft.params))
        assert isinstance(ft.reward, ScorerReward) and ft.reward.checkpoint is ckpt
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_guidance_combines_both_predictions(unet, encode):
    x, t = noise(), torch.tensor(500)
    cond, uncond = encode(PROMPTS), encode(["", ""])
    with torch.no_grad():
        c = unet(x, t, encoder_hidden_states=cond).sample
        u = unet(x, t, encoder_hidden_states=uncond).sample
        g = guided_prediction(unet, x, t, cond, uncond, 3.0)
    torch.testing.assert_close(g, u + 3.0 * (c - u), rtol=1e-4, atol=1e-5)
    with pytest.raises(ZRewardInputError, match="unconditional"):
        guided_prediction(unet, x, t, cond, None, 3.0)


def test_reward_weights_and_dimensions(scorer):
    images = torch.rand(2, 3, 8, 8)
    both = ScorerReward(
        copy.deepcopy(scorer), ["realism", "aesthetics"], {"realism": 2.0, "aesthetics": -1.0}
    )
    mu = both.per_dimension(images, PROMPTS)
    torch.testing.assert_close(both(images, PROMPTS), 2.0 * mu["realism"] - mu["aesthetics"])
    with pytest.raises(ZRewardInputError, match="alignment"):
        ScorerReward(scorer, ["realism"], {"alignment": 1.0})
    with pytest.raises(ZRewardInputError, match="2 weights for 1"):
        ScorerReward(scorer, ["realism"], [1.0, 2.0])


def test_config_refuses_bad_values():
    for kwargs, word in (
        ({"k": 0}, "k"),
        ({"method": "ppo"}, "method"),
        ({"reg": "kl2"}, "reg"),
        ({"learning_rate": float("nan")}, "learning_rate"),
    ):
        with pytest.raises(ZRewardInputError, match=word):
            FinetuneConfig(**kwargs)


def test_jitter_moves_the_content_and_only_in_training(scorer):
    from zreward_deploy.refl.reward import jitter_images

    x = torch.rand(2, 3, 8, 8)
    same = jitter_images(x, torch.zeros(2, 2), torch.ones(2))
    torch.testing.assert_close(same, x)
    moved = jitter_images(x, torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.ones(2))
    torch.testing.assert_close(moved[0, :, 1:, 2:], x[0, :, :-1, :-2])  # down 1, right 2
    reward = ScorerReward(copy.deepcopy(scorer), ["realism"], shift=3.0, zoom=0.2)
    plain = ScorerReward(copy.deepcopy(scorer), ["realism"])
    images = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(reward(images, PROMPTS), plain(images, PROMPTS))  # no graph: no jitter
    trained = images.clone().requires_grad_(True)
    assert not torch.allclose(reward(trained, PROMPTS), plain(images, PROMPTS))


def test_checkpointing_saves_less_for_backward(scorer, encode):
    from zreward_deploy.refl.bench import saved_activation_bytes

    saved = {}
    for ckpt in (False, True):
        ft = finetuner(make_unet(), scorer, encode, k=3, grad_checkpointing=ckpt)
        saved[ckpt] = saved_activation_bytes(ft, PROMPTS, [ft.unet, scorer.model])
    # without: 3 UNet calls' and the reward model's activations; with: their inputs only
    assert 0 < saved[True] < 0.5 * saved[False]
