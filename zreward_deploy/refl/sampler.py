"""A diffusion sampler that keeps the autograd graph through the last K steps (DRaFT-K) or stops at one
late step and predicts the clean sample (ReFL).

It assumes nothing about the model but a call ``model(latents, timestep, encoder_hidden_states=cond)``
returning a tensor or an object with ``.sample`` (every diffusers ``UNet2DConditionModel``; wrap a FLUX
transformer, whose call differs, in a function of that form), and nothing about the scheduler but the
diffusers interface: ``set_timesteps``, ``timesteps``, ``step(...).prev_sample`` and, where it has them, ``init_noise_sigma``
and ``scale_model_input``. Steps before the differentiated ones run without a graph, so memory grows with K
only; with ``checkpoint=True`` each differentiated model call keeps only its inputs and is recomputed in
the backward pass (``torch.utils.checkpoint``, non-reentrant). The scheduler's ``step`` is never inside a
checkpoint: some schedulers count their steps (``FlowMatchEulerDiscreteScheduler._step_index``), and a
recomputation would count twice.

The clean-sample estimate of ReFL is the scheduler's own ``pred_original_sample`` where its step returns
one (DDPM, DDIM, Euler, ...), else :func:`clean_estimate` (flow matching: ``x0 = x_t - sigma v``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..errors import ZRewardInputError


@dataclass
class StepRecord:
    """One differentiated step: its index in the schedule, timestep, the model's input ``latents`` (x_t),
    prediction and, when a reference model was given, the reference's prediction (no graph)."""

    index: int
    timestep: torch.Tensor
    latents: torch.Tensor
    prediction: torch.Tensor
    reference: torch.Tensor | None = None


@dataclass
class SampleOutput:
    """``latents``: the final sample (DRaFT, plain sampling) or the clean estimate at the stopping step
    (ReFL), ``[B, C, h, w]``; ``steps``: the differentiated steps, in order."""

    latents: torch.Tensor
    steps: list[StepRecord] = field(default_factory=list)


def model_prediction(
    model: Callable[..., Any], latents: torch.Tensor, t: torch.Tensor, cond: Any
) -> torch.Tensor:
    """``model(latents, t, encoder_hidden_states=cond)`` as a tensor (``.sample`` / first element)."""
    out = model(latents, t, encoder_hidden_states=cond)
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def guided_prediction(
    model: Callable[..., Any],
    latents: torch.Tensor,
    t: torch.Tensor,
    cond: Any,
    uncond: Any = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """The model's prediction with classifier-free guidance ``u + g (c - u)`` when ``guidance_scale != 1``
    (one batched call when the conditions are tensors, two calls otherwise)."""
    if guidance_scale == 1.0:
        return model_prediction(model, latents, t, cond)
    if uncond is None:
        raise ZRewardInputError("uncond", f"guidance_scale {guidance_scale} needs the unconditional input")
    if isinstance(cond, torch.Tensor) and isinstance(uncond, torch.Tensor):
        both = model_prediction(model, torch.cat([latents, latents]), t, torch.cat([uncond, cond]))
        u, c = both.chunk(2)
    else:
        u, c = model_prediction(model, latents, t, uncond), model_prediction(model, latents, t, cond)
    return u + guidance_scale * (c - u)


def clean_estimate(
    scheduler: Any, sample: torch.Tensor, prediction: torch.Tensor, timestep: torch.Tensor, index: int
) -> torch.Tensor:
    """The model's estimate of the clean sample x0 from ``sample`` = x_t (differentiable).

    Flow matching (a scheduler with ``sigmas`` and no ``alphas_cumprod``): ``x0 = x_t - sigma_i v``.
    DDPM family: with a = alphas_cumprod[t], ``x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)`` (epsilon),
    ``sqrt(a) x_t - sqrt(1 - a) v`` (v_prediction) or the prediction itself (sample).
    """
    if getattr(scheduler, "alphas_cumprod", None) is None:
        sigmas = getattr(scheduler, "sigmas", None)
        if sigmas is None:
            raise ZRewardInputError(
                type(scheduler).__name__, "has neither alphas_cumprod nor sigmas: no clean-sample estimate"
            )
        sigma = sigmas[index].to(sample.device, sample.dtype)
        return sample - sigma * prediction
    a = scheduler.alphas_cumprod.to(sample.device)[int(timestep)].to(sample.dtype)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (sample - (1 - a).sqrt() * prediction) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * sample - (1 - a).sqrt() * prediction
    if kind == "sample":
        return prediction
    raise ZRewardInputError("prediction_type", f"{kind!r} is not epsilon, v_prediction or sample")


def sample_latents(
    model: Callable[..., Any],
    scheduler: Any,
    noise: torch.Tensor,
    cond: Any,
    num_inference_steps: int,
    *,
    grad_steps: int = 0,
    stop_at: int | None = None,
    checkpoint: bool = False,
    guidance_scale: float = 1.0,
    uncond: Any = None,
    reference: Callable[..., Any] | None = None,
) -> SampleOutput:
    """Run the sampler from ``noise`` ``[B, C, h, w]``.

    Args:
        model: the trained denoiser (see the module docstring for the call it must accept).
        scheduler: a diffusers scheduler; ``set_timesteps(num_inference_steps)`` is called here.
        cond / uncond: the conditional and (for guidance) unconditional inputs of the model.
        grad_steps: DRaFT-K: the last K steps keep the graph (0: none does; the output has no graph).
        stop_at: ReFL: stop at this step index, which keeps the graph, and return the model's clean
            estimate there instead of finishing the chain (``grad_steps`` is then ignored).
        checkpoint: recompute each differentiated model call in the backward pass instead of storing
            its activations.
        reference: a frozen copy of the model (e.g. the pretrained one): its prediction at each
            differentiated step is recorded (no graph), for the regulariser.

    Returns:
        :class:`SampleOutput`. Gradients flow only when grad mode is on in the caller.
    """
    n = num_inference_steps
    if n < 1:
        raise ZRewardInputError("num_inference_steps", f"must be >= 1, got {n}")
    if not 0 <= grad_steps <= n:
        raise ZRewardInputError("grad_steps", f"must be in [0, {n}], got {grad_steps}")
    if stop_at is not None and not 0 <= stop_at < n:
        raise ZRewardInputError("stop_at", f"must be in [0, {n - 1}], got {stop_at}")
    scheduler.set_timesteps(n, device=noise.device)
    first = stop_at if stop_at is not None else n - grad_steps
    # flow-matching schedulers have neither: their initial sample is the noise, their input unscaled
    latents = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    scale = getattr(scheduler, "scale_model_input", None)
    records: list[StepRecord] = []
    outer_grad = torch.is_grad_enabled()
    for i, t in enumerate(scheduler.timesteps):
        tracked = i >= first
        with torch.set_grad_enabled(outer_grad and tracked):
            x_in = scale(latents, t) if scale is not None else latents
            if tracked and checkpoint and outer_grad:
                pred = _checkpoint(
                    guided_prediction, model, x_in, t, cond, uncond, guidance_scale, use_reentrant=False
                )
            else:
                pred = guided_prediction(model, x_in, t, cond, uncond, guidance_scale)
            if tracked:
                ref = None
                if reference is not None:
                    with torch.no_grad():
                        ref = guided_prediction(reference, x_in.detach(), t, cond, uncond, guidance_scale)
                records.append(StepRecord(i, t, latents, pred, ref))
            step = scheduler.step(pred, t, latents)
            if i == stop_at:
                # the scheduler's own estimate where it gives one (DDPM, DDIM, Euler...); flow matching's
                # step output has none
                x0 = getattr(step, "pred_original_sample", None)
                return SampleOutput(
                    x0 if x0 is not None else clean_estimate(scheduler, latents, pred, t, i), records
                )
            latents = step.prev_sample
    return SampleOutput(latents, records)
