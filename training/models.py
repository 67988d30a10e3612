"""The models a trainer holds: the one it trains (:func:`load_model`), frozen copies of it
(:func:`frozen_copy`: GDSO's π_ref, a distillation teacher) and :class:`TrainingForward`, the one module
``accelerate.prepare`` wraps.

Multi-process runs wrap the model once (DDP on CPUs with gloo and on GPUs; FSDP when configured) inside
:class:`TrainingForward`, whose ``forward`` runs whichever pass training needs (the student's one-pass
scoring or the teacher-forced reasoning). Every gradient-carrying pass goes through the wrapper's
``forward``, which is what DDP needs to synchronise gradients.

``mixed_precision="bf16"`` (:func:`backbone_autocast`) runs the backbone of a pass, and only the backbone,
under ``torch.autocast(bfloat16)``; the weights stay fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from zreward_deploy.config import SMOLVLM_FAMILIES
from zreward_deploy.modeling import ZRewardModel
from zreward_deploy.native import NativeRewardModel
from zreward_deploy.processing import ZRewardProcessor

RewardModel = ZRewardModel | NativeRewardModel
"""What the trainers train: the package's own model or a native HF VLM; both score with the same
``forward`` and teacher-force with the same ``decoder_hidden`` / ``score_sequences``."""


NATIVE_PRESET_PREFIX = "tiny-"
"""``preset:tiny-FAMILY`` (``tiny-qwen2_vl``, ``tiny-qwen2_5_vl``, ``tiny-qwen3_vl``, ``tiny-smolvlm``): a
tiny native model of that family built from config (:func:`~zreward_deploy.native.build_native_preset`)."""


def load_model(spec: str, seed: int = 0) -> tuple[RewardModel, ZRewardProcessor]:
    """``'preset:NAME'`` -> a fresh preset built with ``seed`` (the package's own presets, or
    ``tiny-FAMILY`` for a native family); anything else -> a model directory: the package's own, or a
    native checkpoint folder (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM) as published."""
    from zreward_deploy.config import NATIVE_FAMILIES
    from zreward_deploy.native import build_native_preset, is_native_dir, load_native
    from zreward_deploy.presets import build_preset

    if spec.startswith("preset:"):
        name = spec.split(":", 1)[1]
        family = name.removeprefix(NATIVE_PRESET_PREFIX)
        if name.startswith(NATIVE_PRESET_PREFIX) and family in NATIVE_FAMILIES:
            return build_native_preset(family, seed=seed)
        return build_preset(name, seed=seed)
    if is_native_dir(spec):
        return load_native(spec)
    model = ZRewardModel.from_pretrained(spec)
    return model, ZRewardProcessor.from_pretrained(spec, config=model.config)


def frozen_copy(model: ZRewardModel) -> ZRewardModel:
    """A copy with gradients off and in eval mode (GDSO's π_ref, a distillation teacher)."""
    import copy

    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def backbone_modules(model: RewardModel) -> list[tuple[nn.Module, bool]]:
    """The modules that compute hidden states, each with whether its output is handed on in fp32: the
    vision tower, the projector and the decoder of the package's model (not ``lm_head``); the HF inner
    model (vision tower, connector, language model) of a Qwen-VL one. What follows them (the restricted
    score head, the token log-softmax, the losses) is the precision-sensitive part.

    SmolVLM's forward writes the connector's output into fp32 input embeddings with an index put that
    refuses another dtype (Qwen-VL's casts first), so there the three parts run under autocast one by
    one, and the connector's output is cast back to fp32."""
    if isinstance(model, NativeRewardModel):
        inner = model.model.model
        if model.family in SMOLVLM_FAMILIES:
            return [(inner.vision_model, False), (inner.connector, True), (inner.text_model, False)]
        return [(inner, False)]
    return [(model.vision_tower, False), (model.projector, False), (model.decoder, False)]


@contextlib.contextmanager
def backbone_autocast(model: RewardModel, mixed_precision: str) -> Iterator[None]:
    """Inside the block, every forward of ``model``'s :func:`backbone_modules` runs under
    ``torch.autocast(device, bfloat16)`` when ``mixed_precision == "bf16"`` (a no-op for ``"no"``).

    Why hooks rather than one ``torch.autocast`` around the whole pass: the score head reads K rows of
    ``lm_head`` and takes their softmax, and under autocast its matmul and (on the CPU) its log-softmax
    would run in bf16, about 3 significant digits for the log-probabilities every loss is made of. Scoped
    to the backbone, the hidden states come out in bf16 and the head, ``teacher_forward``'s token
    log-softmax and the losses run in fp32. The hooks are this block's only: removed on the way out, and
    their autocast is left even when a forward raises (``always_call``). Non-reentrant gradient
    checkpointing records the autocast state and recomputes under it. Not through ``accelerate``'s
    ``mixed_precision``: its process-wide state cannot change once set, and tests train many configs in
    one process.
    """
    if mixed_precision == "no":
        yield
        return
    device_type = next(model.parameters()).device.type
    entered: list[torch.autocast] = []

    def enter(module: nn.Module, args: Any) -> None:
        autocast = torch.autocast(device_type, dtype=torch.bfloat16)
        autocast.__enter__()
        entered.append(autocast)

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        entered.pop().__exit__(None, None, None)

    def leave_in_fp32(module: nn.Module, args: Any, output: Any) -> Any:
        leave(module, args, output)
        return output.float() if isinstance(output, torch.Tensor) else output

    handles = []
    for module, fp32_output in backbone_modules(model):
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(
            module.register_forward_hook(leave_in_fp32 if fp32_output else leave, always_call=True)
        )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class TrainingForward(nn.Module):
    """The one module ``accelerate.prepare`` wraps: its ``forward`` runs the pass a trainer needs.

    ``forward("student", pixel_values=, input_ids=, attention_mask=, suffix_ids=)`` -> the one-pass
    :class:`~zreward_deploy.modeling.ZRewardOutput` with log-probs; ``forward("teacher", pixel_values=,
    prompt_ids=, reasoning_ids=, reasoning_mask=, finished=)`` -> ``teacher_forward``'s
    ``(token_logprobs [N, T], scores)``. Going through ``forward`` (not a method of the inner model) is
    what lets DDP/FSDP see the pass. ``mixed_precision`` (``"no"`` or ``"bf16"``): the backbone runs under
    :func:`backbone_autocast`; the outputs (log-probs, scores) are fp32 either way.
    """

    def __init__(self, model: RewardModel, processor: ZRewardProcessor, mixed_precision: str = "no"):
        super().__init__()
        self.model = model
        self.processor = processor
        self.mixed_precision = mixed_precision

    def forward(self, kind: str, **inputs: Any) -> Any:
        if kind not in ("student", "teacher"):
            raise ValueError(f"unknown pass {kind!r}")
        with backbone_autocast(self.model, self.mixed_precision):
            if kind == "student":
                return self.model(**inputs, return_logprobs=True)
            from zreward_deploy.generation import teacher_forward

            return teacher_forward(self.model, self.processor, **inputs, return_logprobs=True)
