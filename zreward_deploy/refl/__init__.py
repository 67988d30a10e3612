"""Reward fine-tuning of diffusion models with the reward model as a differentiable signal (docs/refl.md).

* :class:`RewardFinetuner` / :class:`FinetuneConfig`: DRaFT-K and ReFL with a KL or L2 regulariser, for
  any diffusers UNet (or a model called like one) and scheduler (:mod:`.finetune`);
* :class:`ScorerReward`: R = Σ_d w_d μ_d of a :class:`~zreward_deploy.scoring.Scorer`, differentiable
  (:mod:`.reward`);
* :func:`sample_latents`: the sampler that keeps the graph through the last K steps (:mod:`.sampler`);
* the tiny diffusers generator that trains on a CPU, cached by config hash (:mod:`.generator`);
* judges and the net win rate (:mod:`.judges`, :mod:`.evaluate`), the cost benchmark (:mod:`.bench`) and
  the end-to-end run (:mod:`.pipeline`, ``zreward refl run``).

Importing this package imports torch, not diffusers (only the tiny generator needs it).
"""

from .finetune import FinetuneConfig, RewardFinetuner, StepStats
from .judges import NetWin, blockiness, image_statistics, net_win_rate, noise_level, sharpness
from .reward import ScorerReward
from .sampler import SampleOutput, clean_estimate, sample_latents

__all__ = [
    "FinetuneConfig",
    "NetWin",
    "RewardFinetuner",
    "SampleOutput",
    "ScorerReward",
    "StepStats",
    "blockiness",
    "clean_estimate",
    "image_statistics",
    "net_win_rate",
    "noise_level",
    "sample_latents",
    "sharpness",
]
