"""How reasoning traces are sampled: each setting's default, help text and check, written once.

* :class:`SamplingConfig` holds the settings (``max_new_tokens``, ``temperature``, ``top_p``,
  ``include_score_token``); it is what the rollouts take (:mod:`.rollouts`).
* :class:`RolloutConfig` is the base of the trainers that sample from the policy they train (GDSO and
  GRPO, OPD): :class:`~.config.TrainConfig`'s fields, then the sampling settings, then ``eval_samples``.
  Such a config *is* a :class:`SamplingConfig`, so it is passed to the rollouts as it is.
* A trainer whose help names who samples (OPD: the student), or that keeps the settings under other
  names (RISD's frozen teacher: ``teacher_max_new_tokens``, ...), declares them with
  :func:`sampling_field` (the default stays this module's) and checks them with :func:`check_sampling`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .config import ConfigError, TrainConfig, help_text, require_at_least


@dataclass
class SamplingConfig:
    """How traces are sampled: a trace is ``generate_reasoning``'s reasoning, then the score read after
    it (and, with ``include_score_token``, a score token sampled from that read-out)."""

    max_new_tokens: int = field(default=32, metadata=help_text("longest reasoning trace sampled (tokens)"))
    temperature: float = field(default=1.0, metadata=help_text("sampling temperature of the reasoning"))
    top_p: float = field(default=1.0, metadata=help_text("nucleus sampling threshold of the reasoning"))
    include_score_token: bool = field(
        default=False,
        metadata=help_text(
            "also put a score token sampled from q into the policy-gradient term (by default only the "
            "reasoning tokens are policy tokens: the reward depends on q, not on a sampled digit)"
        ),
    )

    def __post_init__(self) -> None:
        check_sampling(self)


def check_sampling(cfg: Any, prefix: str = "") -> None:
    """Raise :class:`~.config.ConfigError` unless ``cfg``'s sampling settings, named ``prefix`` +
    ``max_new_tokens`` / ``temperature`` / ``top_p``, are usable: at least one new token, temperature > 0
    and 0 < top_p <= 1."""
    require_at_least(cfg, 1, f"{prefix}max_new_tokens")
    temperature, top_p = getattr(cfg, f"{prefix}temperature"), getattr(cfg, f"{prefix}top_p")
    if not temperature > 0 or not 0 < top_p <= 1:
        raise ConfigError(
            f"{prefix}temperature/top_p",
            f"need temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}",
        )


def sampling_field(name: str, help: str) -> Any:
    """A dataclass field with :class:`SamplingConfig`'s default for the setting ``name`` and the declaring
    trainer's own ``help`` (RISD's ``teacher_*`` fields; OPD's, whose help names the student)."""
    (default,) = (f.default for f in dataclasses.fields(SamplingConfig) if f.name == name)
    return field(default=default, metadata=help_text(help))


@dataclass
class RolloutConfig(SamplingConfig, TrainConfig):
    """The base of the trainers that sample rollouts from the policy they train (GDSO/GRPO, OPD)."""

    eval_samples: int = field(
        default=1, metadata=help_text("reasoning traces averaged per item when evaluating")
    )
    changeable_on_resume: ClassVar[tuple[str, ...]] = (*TrainConfig.changeable_on_resume, "eval_samples")

    def __post_init__(self) -> None:
        # TrainConfig's checks first: every float must be finite before the range checks compare it
        TrainConfig.__post_init__(self)
        SamplingConfig.__post_init__(self)
        require_at_least(self, 1, "eval_samples")

    @property
    def eval_reasoning(self) -> dict[str, Any]:
        """The :class:`~zreward_deploy.scoring.ReasoningScorer` settings of evaluation during and after
        training."""
        return {"num_samples": self.eval_samples, "max_new_tokens": self.max_new_tokens}
