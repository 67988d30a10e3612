"""Reward fine-tuning of a diffusion model: DRaFT-K and ReFL with a KL or L2 regulariser.

One step (:meth:`RewardFinetuner.step`), for B prompts and B initial noises:

* **DRaFT-K** (Clark et al., 2024): sample the whole chain; only the last K model calls keep the graph
  (:func:`~.sampler.sample_latents`), then decode and score. ``loss = -mean_b R_b + λ · reg``.
* **ReFL** (Xu et al., 2023, ImageReward): draw a stopping step s uniformly among the last
  ``refl_last_steps`` steps, run the chain without a graph up to s, call the model once with the graph and
  score the clean estimate x̂0 it implies there (no further sampling).

The regulariser keeps the model near the pretrained one (the reference, a frozen copy unless given),
against reward hacking, on the differentiated steps:

* ``l2``: ``mean_steps mean((pred_θ - pred_ref)²)`` over the model's outputs at the same inputs;
* ``kl``: ``Σ_steps KL(p_θ(x_prev | x_t) || p_ref(x_prev | x_t))`` of the stochastic DDPM transitions
  between the step's timestep t and the next one, both Gaussian with variance β' = 1 - ᾱ_t / ᾱ_prev
  (DDPM's "fixed large" choice; it never vanishes, unlike the posterior variance at the last step),
  so the KL is ``|Δμ|² / (2 β')`` with ``Δμ = √ᾱ_prev β' / (1 - ᾱ_t) · Δx̂0``, summed over the latent's
  elements and averaged over the batch. DDPM-family schedulers only (``alphas_cumprod``).

With ``reward_shift`` / ``reward_zoom``, each image is randomly translated and zoomed before the reward
scores it (:class:`~.reward.ScorerReward`): a pattern locked to the reward model's patch grid then stops
paying (docs/results.md measures what it changes).

Nothing here assumes the tiny generator: the UNet is any model the sampler can call, the scheduler any
diffusers scheduler, ``encode_prompt`` any function of the prompts returning the model's conditioning and
``decode`` any map from final latents to images in [0, 1] (a VAE decode for a latent model). The optimiser
updates the parameters of ``unet`` that require grad (so a PEFT/LoRA-wrapped UNet trains its adapters).
The text encoder is not trained: the conditioning is computed without a graph.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..errors import ZRewardInputError
from .progress import Progress
from .reward import ScorerReward
from .sampler import SampleOutput, StepRecord, sample_latents


@dataclass
class FinetuneConfig:
    """Settings of reward fine-tuning (each is a flag of ``zreward refl finetune``)."""

    method: Literal["draft", "refl"] = field(
        default="draft", metadata={"help": "draft: gradient through the last K steps; refl: one late step"}
    )
    k: int = field(default=1, metadata={"help": "DRaFT-K: sampling steps the gradient flows through"})
    refl_last_steps: int = field(
        default=3, metadata={"help": "ReFL: the stopping step is drawn among the last N steps"}
    )
    num_inference_steps: int = field(default=10, metadata={"help": "sampling steps"})
    guidance_scale: float = field(default=1.0, metadata={"help": "classifier-free guidance (1: none)"})
    dimensions: list[str] | None = field(
        default=None, metadata={"help": "reward dimensions (default: the reward model's trained ones)"}
    )
    weights: list[float] | None = field(
        default=None, metadata={"help": "weight per dimension, in order (default: the rubric's, normalised)"}
    )
    reward_shift: float = field(
        default=0.0,
        metadata={
            "help": "random sub-pixel translation of each image, up to N px, before the reward (0: none)"
        },
    )
    reward_zoom: float = field(
        default=0.0,
        metadata={"help": "random zoom-in of each image by up to 1 + Z before the reward (0: none)"},
    )
    reg: Literal["l2", "kl", "none"] = field(
        default="l2", metadata={"help": "regulariser towards the pretrained model's predictions"}
    )
    reg_weight: float = field(default=1.0, metadata={"help": "λ: loss = -reward + λ · reg"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: none)"})
    grad_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute the model calls, the decode and the reward model in the backward pass"},
    )
    steps: int = field(default=100, metadata={"help": "fine-tuning steps (train())"})
    batch_size: int = field(default=8, metadata={"help": "prompts (images) per step (train())"})
    seed: int = field(default=0, metadata={"help": "seed of the noise, prompts and ReFL steps"})

    def __post_init__(self) -> None:
        if self.method not in ("draft", "refl"):
            raise ZRewardInputError("method", f"must be 'draft' or 'refl', got {self.method!r}")
        if self.reg not in ("l2", "kl", "none"):
            raise ZRewardInputError("reg", f"must be 'l2', 'kl' or 'none', got {self.reg!r}")
        if not 1 <= self.k <= self.num_inference_steps:
            raise ZRewardInputError("k", f"must be in [1, num_inference_steps={self.num_inference_steps}]")
        if not 1 <= self.refl_last_steps <= self.num_inference_steps:
            raise ZRewardInputError("refl_last_steps", f"must be in [1, {self.num_inference_steps}]")
        for name in ("reg_weight", "learning_rate", "max_grad_norm"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ZRewardInputError(name, f"must be finite and >= 0, got {value}")
        for name in ("reward_shift", "reward_zoom"):
            if not getattr(self, name) >= 0:
                raise ZRewardInputError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.steps < 0 or self.batch_size < 1 or self.seed < 0:
            raise ZRewardInputError("steps", "steps >= 0, batch_size >= 1 and seed >= 0 are required")


@dataclass
class StepStats:
    """One fine-tuning step: mean reward of its images, regulariser, loss, gradient norm, wall time."""

    step: int
    reward: float
    reg: float
    loss: float
    grad_norm: float
    seconds: float
    stop_index: int | None = None


def pixel_decode(latents: torch.Tensor) -> torch.Tensor:
    """The decode of a pixel-space model trained on images in [-1, 1]: ``(x / 2 + 0.5).clamp(0, 1)``."""
    return (latents / 2 + 0.5).clamp(0, 1)


def l2_regulariser(steps: Sequence[StepRecord]) -> torch.Tensor:
    """``mean_steps mean((pred - ref)²)``; 0 without differentiated steps."""
    terms = [
        (s.prediction.float() - s.reference.float()).pow(2).mean() for s in steps if s.reference is not None
    ]
    return torch.stack(terms).mean() if terms else torch.zeros(())


def kl_regulariser(steps: Sequence[StepRecord], scheduler: Any) -> torch.Tensor:
    """``Σ_steps mean_b Σ_elements |Δμ|² / (2 β')`` (module docstring); DDPM-family schedulers only."""
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        raise ZRewardInputError(
            type(scheduler).__name__, "reg='kl' needs a DDPM-family scheduler (alphas_cumprod); use reg='l2'"
        )
    kind = scheduler.config.prediction_type
    timesteps = [int(t) for t in scheduler.timesteps]
    final = float(getattr(scheduler, "final_alpha_cumprod", torch.tensor(1.0)))
    total = torch.zeros(())
    for s in steps:
        if s.reference is None:
            continue
        a_t = float(alphas[timesteps[s.index]])
        a_prev = float(alphas[timesteps[s.index + 1]]) if s.index + 1 < len(timesteps) else final
        beta = max(1.0 - a_t / a_prev, 1e-8)
        diff = s.prediction.float() - s.reference.float()
        if kind == "epsilon":
            dx0 = -((1 - a_t) ** 0.5) / a_t**0.5 * diff
        elif kind == "v_prediction":
            dx0 = -((1 - a_t) ** 0.5) * diff
        elif kind == "sample":
            dx0 = diff
        else:
            raise ZRewardInputError("prediction_type", f"{kind!r} is not epsilon, v_prediction or sample")
        dmu = a_prev**0.5 * beta / (1 - a_t) * dx0
        total = total + dmu.pow(2).flatten(1).sum(1).mean() / (2 * beta)
    return total


class RewardFinetuner:
    """DRaFT-K / ReFL fine-tuning of ``unet`` against a differentiable reward.

    Args:
        unet: the denoiser (``unet(latents, t, encoder_hidden_states=cond)``; diffusers UNets as they are).
        scheduler: a diffusers scheduler (DDIM, DDPM, Euler, flow matching ...).
        reward: a callable ``(images [B, 3, H, W] in [0, 1], prompts) -> [B]`` or a :class:`Scorer`, which
            is wrapped in :class:`~.reward.ScorerReward` with the config's dimensions and weights.
        encode_prompt: ``prompts -> cond`` (e.g. a diffusers pipeline's text encoder call).
        latent_shape: ``(C, h, w)`` of one sample's latents (default: ``unet.config`` in_channels and
            sample_size).
        config: :class:`FinetuneConfig`.
        decode: final latents -> images in [0, 1] (default :func:`pixel_decode`; a VAE decode for latent
            models).
        reference: the frozen model of the regulariser (default: a deep copy of ``unet`` made here, when
            ``config.reg`` is not "none"). With LoRA, pass the base model call (adapters disabled) instead.
        optimizer: default AdamW over the parameters of ``unet`` that require grad.
    """

    def __init__(
        self,
        unet: Any,
        scheduler: Any,
        reward: Any,
        encode_prompt: Callable[[Sequence[str]], Any],
        latent_shape: Sequence[int] | None = None,
        config: FinetuneConfig | None = None,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        reference: Callable[..., Any] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ):
        self.config = cfg = config or FinetuneConfig()
        self.unet, self.scheduler, self.encode_prompt = unet, scheduler, encode_prompt
        if hasattr(reward, "score_tensor"):
            reward = ScorerReward(
                reward,
                cfg.dimensions,
                cfg.weights,
                checkpoint=cfg.grad_checkpointing,
                shift=cfg.reward_shift,
                zoom=cfg.reward_zoom,
                seed=cfg.seed,
            )
        elif not callable(reward):
            raise ZRewardInputError("reward", f"must be callable or a Scorer, got {type(reward).__name__}")
        self.reward = reward
        self.decode = decode or pixel_decode
        self.latent_shape = tuple(latent_shape or _latent_shape(unet))
        if cfg.reg != "none" and reference is None:
            reference = copy.deepcopy(unet).requires_grad_(False).eval()
        self.reference = reference if cfg.reg != "none" else None
        if cfg.reg == "kl":
            kl_regulariser([], scheduler)  # refuses a scheduler without alphas_cumprod now, not at step 1
        self.params = [p for p in unet.parameters() if p.requires_grad]
        if not self.params and optimizer is None:
            raise ZRewardInputError("unet", "has no parameter that requires grad: nothing to fine-tune")
        self.optimizer = optimizer or torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=0.0)
        self.rng = np.random.default_rng(cfg.seed)
        self.step_count = 0

    # -- one step ---------------------------------------------------------------------------------------
    def noise(self, n: int) -> torch.Tensor:
        """``[n, *latent_shape]`` initial noise from the finetuner's seeded generator."""
        noise = self.rng.standard_normal((n, *self.latent_shape)).astype(np.float32)
        return torch.from_numpy(noise).to(_device(self.unet))

    def conditioning(self, prompts: Sequence[str]) -> tuple[Any, Any]:
        """``(cond, uncond)`` without a graph (``uncond`` only with guidance)."""
        with torch.no_grad():
            cond = self.encode_prompt(list(prompts))
            uncond = self.encode_prompt([""] * len(prompts)) if self.config.guidance_scale != 1.0 else None
        return cond, uncond

    def forward(
        self, prompts: Sequence[str], noise: torch.Tensor | None = None, stop_index: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, SampleOutput]:
        """Images ``[B, 3, H, W]`` with the graph of the configured method, their rewards ``[B]`` and the
        sampler's output. ``stop_index`` overrides ReFL's random stopping step."""
        cfg = self.config
        noise = self.noise(len(prompts)) if noise is None else noise.to(_device(self.unet))
        cond, uncond = self.conditioning(prompts)
        kwargs: dict[str, Any] = {
            "checkpoint": cfg.grad_checkpointing,
            "guidance_scale": cfg.guidance_scale,
            "uncond": uncond,
            "reference": self.reference,
        }
        if cfg.method == "draft":
            kwargs["grad_steps"] = cfg.k
        else:
            if stop_index is None:
                stop_index = cfg.num_inference_steps - 1 - int(self.rng.integers(cfg.refl_last_steps))
            kwargs["stop_at"] = stop_index
        out = sample_latents(self.unet, self.scheduler, noise, cond, cfg.num_inference_steps, **kwargs)
        if cfg.grad_checkpointing and out.latents.requires_grad:
            # a VAE decoder's activations at full resolution can outweigh the UNet's: recompute them too
            images = _checkpoint(self.decode, out.latents, use_reentrant=False)
        else:
            images = self.decode(out.latents)
        return images, self.reward(images, list(prompts)), out

    def regulariser(self, out: SampleOutput) -> torch.Tensor:
        if self.config.reg == "l2":
            return l2_regulariser(out.steps)
        if self.config.reg == "kl":
            return kl_regulariser(out.steps, self.scheduler)
        return torch.zeros(())

    def loss(
        self, prompts: Sequence[str], noise: torch.Tensor | None = None, stop_index: int | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``-mean R + λ reg`` with its graph, and the parts as floats."""
        _, rewards, out = self.forward(prompts, noise, stop_index)
        reg = self.regulariser(out).to(rewards.device)
        loss = -rewards.mean() + self.config.reg_weight * reg
        stop = out.steps[0].index if self.config.method == "refl" and out.steps else None
        return loss, {
            "reward": float(rewards.detach().mean()),
            "reg": float(reg.detach()),
            "stop_index": stop,
        }

    def step(self, prompts: Sequence[str], noise: torch.Tensor | None = None) -> StepStats:
        """One optimiser step on ``prompts`` (one image each; initial ``noise`` given or drawn)."""
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss, parts = self.loss(prompts, noise)
        loss.backward()
        if self.config.max_grad_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm))
        else:
            norm = float(
                torch.linalg.vector_norm(
                    torch.stack([p.grad.norm() for p in self.params if p.grad is not None])
                )
            )
        if not np.isfinite(norm) or not np.isfinite(float(loss.detach())):
            raise ZRewardInputError(
                f"step {self.step_count + 1}",
                f"non-finite loss or gradient (loss {float(loss)}, norm {norm})",
            )
        self.optimizer.step()
        self.step_count += 1
        return StepStats(
            self.step_count,
            parts["reward"],
            parts["reg"],
            float(loss.detach()),
            norm,
            time.perf_counter() - start,
            parts["stop_index"],
        )

    def train(
        self,
        prompts: Sequence[str],
        steps: int | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> list[StepStats]:
        """``steps`` (default ``config.steps``) steps of ``config.batch_size`` prompts drawn with
        replacement from ``prompts``."""
        if not prompts:
            raise ZRewardInputError("prompts", "no prompts to fine-tune on")
        total = self.config.steps if steps is None else steps
        bar = Progress(f"fine-tune ({self.config.method})", total, enabled=progress, log=log)
        history = []
        for i in range(total):
            batch = [prompts[j] for j in self.rng.integers(len(prompts), size=self.config.batch_size)]
            history.append(self.step(batch))
            bar.update(i + 1, f"reward {history[-1].reward:.3f}, reg {history[-1].reg:.4f}")
        return history

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], noise: torch.Tensor) -> torch.Tensor:
        """Plain sampling (no graph): images ``[B, 3, H, W]`` in [0, 1]."""
        cond, uncond = self.conditioning(prompts)
        out = sample_latents(
            self.unet,
            self.scheduler,
            noise.to(_device(self.unet)),
            cond,
            self.config.num_inference_steps,
            guidance_scale=self.config.guidance_scale,
            uncond=uncond,
        )
        return self.decode(out.latents)


def _device(module: Any) -> torch.device:
    try:
        return next(module.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _latent_shape(unet: Any) -> tuple[int, int, int]:
    cfg = getattr(unet, "config", None)
    size = getattr(cfg, "sample_size", None) if cfg is not None else None
    channels = getattr(cfg, "in_channels", None) if cfg is not None else None
    if channels is None or size is None:
        raise ZRewardInputError(
            "latent_shape", "cannot be read from unet.config; pass latent_shape=(C, h, w)"
        )
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(channels), int(h), int(w))
