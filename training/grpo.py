"""GRPO baseline (docs/method.md §5): GDSO without the direct losses, α_pt = α_pw = 0.

The rewards are the same as GDSO's (``r = λ_pt r_pt + λ_pw r_pw`` from the expectation μ of each
sampled trace's score distribution: the paper's GRPO computes rewards "from the mean of the predicted
score distribution"), and so are the sampling, advantages, clipped policy loss, KL and reference resets:
the loop is :func:`~.gdso.train_gdso`. Only the CE and score-gap terms are off, so the score read-out
learns from the policy gradient through the reasoning alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .config import ConfigError
from .gdso import GDSOConfig, train_gdso
from .run import TrainResult


@dataclass
class GRPOConfig(GDSOConfig):
    """GRPO: a :class:`~.gdso.GDSOConfig` whose α_pt and α_pw must be 0."""

    method: ClassVar[str] = "grpo"

    alpha_pt: float = field(default=0.0, metadata={"help": "must be 0 for GRPO (use gdso for α > 0)"})
    alpha_pw: float = field(default=0.0, metadata={"help": "must be 0 for GRPO (use gdso for α > 0)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha_pt != 0 or self.alpha_pw != 0:
            raise ConfigError(
                "alpha_pt/alpha_pw", "GRPO is GDSO with α = 0; train `gdso` to use the direct losses"
            )


def train_grpo(cfg: GRPOConfig) -> TrainResult:
    """Run the GRPO baseline (the GDSO loop with α = 0)."""
    return train_gdso(cfg)
