"""Building models: tiny presets from configs (tests, demo, CPU benchmarks) and ``compose`` from
pretrained component checkpoints on disk. Nothing is fetched from a hub (docs/design.md §3).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from .config import ScoreScale, ZRewardConfig
from .errors import InvalidModelError
from .modeling import (
    SUPPORTED_TEXT_MODELS,
    ScoreHead,
    ZRewardModel,
    ZRewardProjector,
    load_dtype,
    quiet_progress_bars,
)
from .processing import ZRewardProcessor
from .tokenization import build_tokenizer

# Sizes of the presets. `tiny` runs a forward pass in milliseconds (tests); `bench-small` is big enough
# that CPU timings mean something (196 image tokens, LM hidden 512, 8 layers).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "vision": {
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
    },
    # `tiny` at 64 px (64 image tokens): the synthetic set's quality defects (blur, noise) are 64-px
    # effects that 32 px largely averages away; the training learning test and docs/results.md use it.
    "tiny-64": {
        "vision": {
            "image_size": 64,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
    },
    "bench-small": {
        "vision": {
            "image_size": 224,
            "patch_size": 16,
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
        },
        "text": {
            "hidden_size": 512,
            "intermediate_size": 1408,
            "num_hidden_layers": 8,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
        },
    },
}

_VISION_TYPES = {"siglip": "siglip_vision_model", "clip": "clip_vision_model"}
_IMAGE_STATS = {  # the normalisation each family was trained with
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


def text_config(model_type: str, vocab_size: int, tokenizer: Any = None, **sizes: Any) -> PretrainedConfig:
    """A Qwen2 / Qwen3 / Llama text config of the given sizes."""
    if model_type not in SUPPORTED_TEXT_MODELS:
        raise InvalidModelError("text_model_type", f"{model_type!r} is not one of {SUPPORTED_TEXT_MODELS}")
    fields: dict[str, Any] = {
        "vocab_size": vocab_size,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-6,
        **sizes,
    }
    if model_type in ("qwen3", "llama"):
        fields.setdefault("head_dim", fields["hidden_size"] // fields["num_attention_heads"])
    if tokenizer is not None:
        fields.update(
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
    return CONFIG_MAPPING[model_type](**fields)


def vision_config(model_type: str, **sizes: Any) -> PretrainedConfig:
    """A SigLIP or CLIP vision config of the given sizes."""
    if model_type not in _VISION_TYPES:
        raise InvalidModelError("vision_model_type", f"{model_type!r} is not one of {sorted(_VISION_TYPES)}")
    fields = dict(sizes)
    if model_type == "siglip":
        fields.setdefault("vision_use_head", False)  # the pooled head is unused: we take all tokens
    return CONFIG_MAPPING[_VISION_TYPES[model_type]](**fields)


def build_preset(
    name: str = "tiny",
    text_model_type: str = "qwen2",
    vision_model_type: str = "siglip",
    seed: int = 0,
    score_scale: ScoreScale | None = None,
    rubric: Sequence[Mapping[str, Any]] | None = None,
    **config_kwargs: Any,
) -> tuple[ZRewardModel, ZRewardProcessor]:
    """Build a randomly initialised preset model with the package's offline tokenizer.

    Args:
        name: ``"tiny"`` or ``"bench-small"``.
        text_model_type: ``"qwen2"``, ``"qwen3"`` or ``"llama"``.
        vision_model_type: ``"siglip"`` or ``"clip"``.
        seed: weights are a pure function of the seed (the global RNG is left untouched) on one
            transformers line; 4.57 and 5 initialise the modules in another order, so the same seed
            gives other weights on each.
        score_scale: defaults to the 1..5 integer scale.
        rubric: defaults to the four paper dimensions.
        **config_kwargs: further :class:`ZRewardConfig` fields (templates, score_temperature, ...).

    Returns:
        ``(model, processor)``; save both with ``save_pretrained(dir)`` to get a loadable model directory.
    """
    if name not in PRESETS:
        raise InvalidModelError(name, f"unknown preset; choose from {sorted(PRESETS)}")
    sizes = PRESETS[name]
    tokenizer = build_tokenizer()
    scale = score_scale or ScoreScale()
    mean, std = _IMAGE_STATS[vision_model_type]
    config = ZRewardConfig(
        vision_config=vision_config(vision_model_type, **sizes["vision"]),
        text_config=text_config(text_model_type, len(tokenizer), tokenizer, **sizes["text"]),
        image_mean=mean,
        image_std=std,
        vision_feature_select="patch" if vision_model_type == "clip" else "full",
        score_scale=scale.to_dict(),
        score_token_ids=scale.token_ids(tokenizer),
        rubric=rubric,
        **{"training": {"method": "none", "dimensions": []}, **config_kwargs},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ZRewardModel(config)
    model.eval()
    return model, ZRewardProcessor(tokenizer, config)


def compose(
    vision_dir: str | os.PathLike,
    language_dir: str | os.PathLike,
    score_scale: ScoreScale | None = None,
    rubric: Sequence[Mapping[str, Any]] | None = None,
    seed: int = 0,
    torch_dtype: torch.dtype | None = None,
    **config_kwargs: Any,
) -> tuple[ZRewardModel, ZRewardProcessor]:
    """Assemble a model from pretrained component checkpoints on disk (safetensors only).

    Args:
        vision_dir: a SigLIP/CLIP checkpoint (a vision-only model or a full dual-encoder; only the vision
            tower is taken). Its ``preprocessor_config.json``, if present, gives the image normalisation.
        language_dir: a Qwen2/Qwen3/Llama causal-LM checkpoint with its tokenizer.
        score_scale, rubric, **config_kwargs: as in :func:`build_preset`.
        seed: initialisation of the (new) projector.
        torch_dtype: load the components in this dtype (default: torch's default dtype, float32,
            whatever the checkpoints store; see ``modeling.load_dtype``).

    Returns:
        ``(model, processor)``. The projector is freshly initialised: train it before use.
    """
    vision_dir, language_dir = Path(vision_dir), Path(language_dir)
    for d in (vision_dir, language_dir):
        if not (d / "config.json").exists():
            raise InvalidModelError(str(d), "has no config.json; expected a saved component checkpoint")
    v_config = AutoConfig.from_pretrained(vision_dir, local_files_only=True)
    if v_config.model_type in ("siglip", "clip"):
        v_config = v_config.vision_config
    if v_config.model_type not in _VISION_TYPES.values():
        raise InvalidModelError(
            str(vision_dir), f"model_type {v_config.model_type!r} is not a SigLIP/CLIP vision model"
        )
    t_config = AutoConfig.from_pretrained(language_dir, local_files_only=True)
    if t_config.model_type not in SUPPORTED_TEXT_MODELS:
        raise InvalidModelError(
            str(language_dir), f"model_type {t_config.model_type!r} is not one of {SUPPORTED_TEXT_MODELS}"
        )
    tokenizer = AutoTokenizer.from_pretrained(language_dir, local_files_only=True)
    if tokenizer.pad_token_id is None:  # Llama tokenizers ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    family = "clip" if v_config.model_type.startswith("clip") else "siglip"
    mean, std = _image_stats(vision_dir, family)
    scale = score_scale or ScoreScale()
    config = ZRewardConfig(
        vision_config=v_config,
        text_config=t_config,
        image_mean=mean,
        image_std=std,
        vision_feature_select="patch" if family == "clip" else "full",
        score_scale=scale.to_dict(),
        score_token_ids=scale.token_ids(tokenizer),
        rubric=rubric,
        **{"training": {"method": "compose", "dimensions": []}, **config_kwargs},
    )
    load = {"local_files_only": True, "use_safetensors": True, "dtype": load_dtype(torch_dtype)}
    try:
        vision_cls = type(_meta_model(config).vision_tower)
        with quiet_progress_bars():
            vision = vision_cls.from_pretrained(vision_dir, config=v_config, **load)
            language = AutoModelForCausalLM.from_pretrained(language_dir, **load)
    except OSError as exc:
        raise InvalidModelError(
            f"{vision_dir} / {language_dir}", f"cannot load component weights: {exc}"
        ) from None
    # Build the wrapper on the meta device and drop the loaded components in, so a large model is never
    # held twice in memory; only the projector is new.
    model = _meta_model(config)
    model.vision_tower, model.language_model = vision, language
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.projector = ZRewardProjector(
            v_config.hidden_size, t_config.hidden_size, config.projector_hidden_act
        )
        model._init_weights(model.projector)
    model.projector.to(dtype=next(language.parameters()).dtype)
    model.score_head = ScoreHead(config)
    model.eval()
    return model, ZRewardProcessor(tokenizer, config)


def _meta_model(config: ZRewardConfig) -> ZRewardModel:
    with torch.device("meta"):
        return ZRewardModel(config)


def _image_stats(vision_dir: Path, family: str) -> tuple[Sequence[float], Sequence[float]]:
    path = vision_dir / "preprocessor_config.json"
    if path.exists():
        data = json.loads(path.read_text())
        if "image_mean" in data and "image_std" in data:
            return data["image_mean"], data["image_std"]
    return _IMAGE_STATS[family]
