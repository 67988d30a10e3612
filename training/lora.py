"""LoRA through ``peft`` (``TrainConfig.lora_r > 0``): adapters on the language model's linear layers, the
rest frozen, and the merged weights that every saved model folder holds.

* **Where.** :func:`lora_targets` picks the ``nn.Linear`` modules of the language model (the package's
  decoder; a native model's text model) whose last name part is in ``lora_target_modules``; the vision
  tower's layers never match, even where they share a name (SigLIP's and SmolVLM's ``q_proj``, Qwen2.5-VL's
  ``gate_proj``). ``peft.inject_adapter_in_model`` replaces those layers in place (the model keeps its
  class and its attributes, so the trainers and ``TrainingForward`` see the same object) and leaves only
  the adapters trainable. ``lm_head`` gets no adapter and stays frozen, its score-token rows included:
  the adapters change the hidden states the restricted head reads, which is what adapting a reward
  model's judgement needs, and a frozen head keeps the merged model's ``lm_head`` the base's, bit for bit.
* **Initialisation.** peft's: ``A`` Kaiming-uniform, ``B = 0``, so step 0 is the base model. ``A`` is drawn
  from a generator seeded by ``(seed, "lora")``, not from the global one, so the run is a function of the
  seed whatever ran before.
* **Saved.** Checkpoints keep the adapters (``lora_adapter.safetensors``, :data:`ADAPTER_FILE`) beside the
  merged model; resume rebuilds the base from ``model`` (the resume rule guarantees the same spec) and
  loads the adapters, so a resumed run continues exactly. Every ``model/`` folder (checkpoints' and the
  final one) holds :func:`merged_state_dict`: ``W + (lora_alpha / r) · B @ A`` under the plain weight
  names, an ordinary model that loads without peft.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from zreward_deploy.config import SMOLVLM_FAMILIES
from zreward_deploy.generation import derive_seed
from zreward_deploy.native import NativeRewardModel

from .config import LORA_EXTRA, ConfigError, TrainConfig

ADAPTER_NAME = "default"  # peft's name of the one adapter
ADAPTER_FILE = "lora_adapter.safetensors"  # a checkpoint's adapter weights (the model's own names)
_BASE = ".base_layer."  # peft's LoRA layer keeps the original layer under this name
_LORA = (".lora_A.", ".lora_B.")


def import_peft() -> Any:
    """``peft``, or a :class:`ConfigError` naming ``lora_r`` and the extra that installs it."""
    try:
        import peft
    except ImportError:
        raise ConfigError("lora_r", f"LoRA needs peft, which is not installed: {LORA_EXTRA}") from None
    return peft


def language_model(model: nn.Module) -> nn.Module:
    """The decoder whose linear layers get adapters: the package's ``model.decoder``; a native model's text
    model (Qwen-VL's ``language_model``, SmolVLM's ``text_model``), without its vision tower."""
    if isinstance(model, NativeRewardModel):
        inner = model.model.model
        return inner.text_model if model.family in SMOLVLM_FAMILIES else inner.language_model
    return model.decoder


def lora_targets(model: nn.Module, names: list[str]) -> list[str]:
    """Full module names (``model``'s) of the language model's ``nn.Linear`` layers whose last name part is
    in ``names``.

    Raises:
        ConfigError: naming ``lora_target_modules`` when nothing matches, with the names there are.
    """
    decoder = language_model(model)
    prefix = next(n for n, m in model.named_modules() if m is decoder)
    linear = [(n, m) for n, m in decoder.named_modules() if isinstance(m, nn.Linear)]
    chosen = [f"{prefix}.{n}" for n, _ in linear if n.rsplit(".", 1)[-1] in names]
    if not chosen:
        available = sorted({n.rsplit(".", 1)[-1] for n, _ in linear})
        raise ConfigError(
            "lora_target_modules",
            f"{names} match no linear layer of the language model, whose layers are named {available}",
        )
    return chosen


def apply_lora(model: nn.Module, cfg: TrainConfig) -> None:
    """Inject LoRA adapters (rank ``cfg.lora_r``) into ``model`` in place; only they stay trainable."""
    peft = import_peft()
    targets = lora_targets(model, list(cfg.lora_target_modules))
    root: nn.Module = model
    if isinstance(model, NativeRewardModel):
        # into the HF model itself (which holds every weight of the wrapper): peft on transformers 5 reads
        # the weight-conversion mapping of the model it injects into, which needs a PreTrainedModel
        root = model.model
        targets = [t.removeprefix("model.") for t in targets]
    config = peft.LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        bias="none",
    )
    # the adapters are created on the CPU (before accelerate moves the model): only the CPU generator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "lora"))
        peft.inject_adapter_in_model(config, root, adapter_name=ADAPTER_NAME)


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{module name: peft LoRA layer}`` of ``model`` (empty without LoRA)."""
    return {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}


def has_lora(model: nn.Module) -> bool:
    return bool(lora_layers(model))


def is_adapter_weight(name: str) -> bool:
    return any(part in name for part in _LORA)


def adapter_state_dict(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors of a state dict (what a checkpoint keeps besides the merged model)."""
    return {k: v for k, v in weights.items() if is_adapter_weight(k)}


def merged_state_dict(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` (``model``'s state dict, adapters injected) as the plain model's state dict: each adapted
    layer's ``weight`` is ``W + scaling · B @ A`` (peft's ``get_delta_weight``, fp32 here), its bias the
    base layer's, and the adapters are gone. Without LoRA, ``weights`` as they are."""
    layers = lora_layers(model)
    if not layers:
        return dict(weights)
    merged = {k.replace(_BASE, "."): v for k, v in weights.items() if not is_adapter_weight(k)}
    for name, layer in layers.items():
        a = weights[f"{name}.lora_A.{ADAPTER_NAME}.weight"]
        b = weights[f"{name}.lora_B.{ADAPTER_NAME}.weight"]
        base = weights[f"{name}.base_layer.weight"]
        delta = (b.float() @ a.float()) * layer.scaling[ADAPTER_NAME]
        merged[f"{name}.weight"] = (base.float() + delta).to(base.dtype)
    return merged


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under the plain model's names (merged when it carries adapters): what a frozen
    copy of the model (GDSO's π_ref) loads."""
    return merged_state_dict(model, model.state_dict())
