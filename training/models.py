"""The models a trainer holds: the one it trains (:func:`load_model`), frozen copies of it
(:func:`frozen_copy`: GDSO's π_ref, a distillation teacher) and :class:`TrainingForward`, the one module
``accelerate.prepare`` wraps.

Multi-process runs wrap the model once (DDP on CPUs with gloo and on GPUs; FSDP when configured) inside
:class:`TrainingForward`, whose ``forward`` runs whichever pass training needs (the student's one-pass
scoring or the teacher-forced reasoning). Every gradient-carrying pass goes through the wrapper's
``forward``, which is what DDP needs to synchronise gradients.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from zreward_deploy.modeling import ZRewardModel
from zreward_deploy.processing import ZRewardProcessor


def load_model(spec: str, seed: int = 0) -> tuple[ZRewardModel, ZRewardProcessor]:
    """``'preset:NAME'`` -> a fresh preset built with ``seed``; anything else -> a model directory."""
    from zreward_deploy.presets import build_preset

    if spec.startswith("preset:"):
        return build_preset(spec.split(":", 1)[1], seed=seed)
    model = ZRewardModel.from_pretrained(spec)
    return model, ZRewardProcessor.from_pretrained(spec, config=model.config)


def frozen_copy(model: ZRewardModel) -> ZRewardModel:
    """A copy with gradients off and in eval mode (GDSO's π_ref, a distillation teacher)."""
    import copy

    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


class TrainingForward(nn.Module):
    """The one module ``accelerate.prepare`` wraps: its ``forward`` runs the pass a trainer needs.

    ``forward("student", pixel_values=, input_ids=, attention_mask=, suffix_ids=)`` -> the one-pass
    :class:`~zreward_deploy.modeling.ZRewardOutput` with log-probs; ``forward("teacher", pixel_values=,
    prompt_ids=, reasoning_ids=, reasoning_mask=, finished=)`` -> ``teacher_forward``'s
    ``(token_logprobs [N, T], scores)``. Going through ``forward`` (not a method of the inner model) is
    what lets DDP/FSDP see the pass.
    """

    def __init__(self, model: ZRewardModel, processor: ZRewardProcessor):
        super().__init__()
        self.model = model
        self.processor = processor

    def forward(self, kind: str, **inputs: Any) -> Any:
        if kind == "student":
            return self.model(**inputs, return_logprobs=True)
        if kind == "teacher":
            from zreward_deploy.generation import teacher_forward

            return teacher_forward(self.model, self.processor, **inputs, return_logprobs=True)
        raise ValueError(f"unknown pass {kind!r}")
