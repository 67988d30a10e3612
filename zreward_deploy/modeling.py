"""The Z-Reward vision-language model: vision tower -> projector -> causal LM -> score head.

Layout (docs/design.md §3) is static so that it exports: ``[image tokens][text tokens]``, image features
concatenated in front of the text embeddings, no data-dependent scatter and no Python branching on values.

Two ways to read scores:

* :meth:`ZRewardModel.forward` (student, all dimensions in one pass): the text is
  ``[prompt (right-padded)][suffix_1]...[suffix_D]``. A 4-D attention mask lets every suffix see the
  valid image+prompt prefix and itself only, and position ids restart after each row's own prefix, so
  each suffix is computed exactly as in its own sequence ``[image][prompt][suffix_d]`` while the prefix is
  computed once. Answer positions are the last token of each suffix: static indices, never negative.
* :meth:`ZRewardModel.score_sequences` (one dimension per sequence, the teacher's read-out after its
  reasoning): ordinary causal attention over right-padded sequences; the answer position of each row is
  taken from its attention mask.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from .config import NATIVE_FAMILIES, ZRewardConfig, load_config
from .errors import InvalidModelError
from .fileio import atomic_directory, is_regular_file, read_json_object
from .kernels.score_head import ScoreHeadOutput, score_head

SUPPORTED_TEXT_MODELS = ("qwen2", "qwen3", "llama")
SUPPORTED_VISION_MODELS = ("siglip_vision_model", "clip_vision_model")

# Weight names in files. transformers 5 removed the `vision_model` wrapper module of SiglipVisionModel and
# CLIPVisionModel, so in memory the tower's weights are `vision_tower.embeddings...` there and
# `vision_tower.vision_model.embeddings...` under 4.57. Files always carry the 4.57 names (every folder
# written so far has them), so a folder written under either line loads under the other (a model trained on
# 5.x and exported by optimum-onnx on 4.57, say). transformers 5's `from_pretrained` maps these names
# to its modules itself (its checkpoint conversion mapping for CLIPVisionModel and SiglipVisionModel);
# `weights_from_file` does it for a plain `load_state_dict` (training/checkpoints.py).
_TOWER = "vision_tower."
_TOWER_IN_FILES = "vision_tower.vision_model."


@dataclass
class ZRewardOutput(ModelOutput):
    """Score distributions for ``B`` items and ``D`` dimensions over ``K`` score values (all fp32).

    probs: ``[B, D, K]``; mean, var, std: ``[B, D]``; logprobs: ``[B, D, K]`` when requested.
    """

    probs: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    var: torch.Tensor | None = None
    std: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None


class ZRewardProjector(nn.Module):
    """Two-layer MLP from vision width to LM width (LLaVA-style)."""

    def __init__(self, vision_hidden: int, text_hidden: int, act: str):
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden, text_hidden)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(text_hidden, text_hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class ScoreHead(nn.Module):
    """Q-Align read-out restricted to the K score tokens (docs/design.md §3).

    Reads only rows ``score_token_ids`` of ``lm_head``; never computes the full-vocabulary projection.
    Owns no parameters: the weights are the LM's own ``lm_head`` rows, so training the head trains them.
    """

    def __init__(self, config: ZRewardConfig):
        super().__init__()
        if config.score_token_ids is None:
            raise InvalidModelError(
                "score_token_ids",
                "are not set; build the config with the tokenizer (see presets.build_model)",
            )
        self._score_token_ids = [int(i) for i in config.score_token_ids]
        self._values = [float(v) for v in config.get_score_scale().values]
        k = len(self._score_token_ids)
        self.register_buffer("score_ids", torch.empty(k, dtype=torch.long), persistent=False)
        self.register_buffer("values", torch.empty(k, dtype=torch.float32), persistent=False)
        self.fill_buffers()
        self.temperature = config.score_temperature
        self.backend = config.score_head_backend

    @torch.no_grad()
    def fill_buffers(self) -> None:
        """Write the score-token ids and score values (constants of the config) into the buffers.

        The buffers are non-persistent (not in the weights file), so whatever builds the module must fill
        them: ``__init__`` does, and so does ``ZRewardPreTrainedModel._init_weights``, which transformers 5
        calls after ``from_pretrained`` gave every non-persistent buffer fresh, uninitialised storage.
        """
        # the device is explicit: a meta-device context may be active around __init__
        self.score_ids.copy_(
            torch.tensor(self._score_token_ids, dtype=torch.long, device=self.score_ids.device)
        )
        self.values.copy_(torch.tensor(self._values, dtype=torch.float32, device=self.values.device))

    def forward(
        self, hidden: torch.Tensor, lm_head_weight: torch.Tensor, return_logprobs: bool = False
    ) -> ScoreHeadOutput:
        """``hidden [N, H]``, ``lm_head_weight [V, H]`` -> :class:`ScoreHeadOutput` (``probs [N, K]`` ...)."""
        # "auto" defers to $ZREWARD_SCORE_HEAD (default: Triton on CUDA, the reference elsewhere)
        return score_head(
            hidden,
            lm_head_weight,
            self.values,
            self.temperature,
            score_ids=self.score_ids,
            return_logprobs=return_logprobs,
            backend=None if self.backend == "auto" else self.backend,
        )


class ZRewardPreTrainedModel(PreTrainedModel):
    config_class = ZRewardConfig
    base_model_prefix = "zreward"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules: ClassVar[list[str]] = ["ZRewardProjector"]

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, ZRewardProjector):
            std = getattr(self.config.text_config, "initializer_range", 0.02)
            for linear in (module.linear_1, module.linear_2):
                nn.init.normal_(linear.weight, std=std)
                nn.init.zeros_(linear.bias)
        elif isinstance(module, ScoreHead):
            # transformers 5 builds the model on the meta device inside `from_pretrained`, then gives
            # non-persistent buffers `torch.empty_like` storage and expects `_init_weights` to refill them
            # (PreTrainedModel._move_missing_keys_from_meta_to_device); 4.57 kept them from __init__.
            # Without this the score ids are uninitialised memory: an IndexError or silently wrong rows.
            module.fill_buffers()


class ZRewardModel(ZRewardPreTrainedModel):
    """Score-distribution reward model (teacher or student: same class, different size and template)."""

    def __init__(self, config: ZRewardConfig):
        super().__init__(config)
        if config.text_config.model_type not in SUPPORTED_TEXT_MODELS:
            raise InvalidModelError(
                "text_config",
                f"model_type {config.text_config.model_type!r} is not one of {SUPPORTED_TEXT_MODELS}",
            )
        if config.vision_config.model_type not in SUPPORTED_VISION_MODELS:
            raise InvalidModelError(
                "vision_config",
                f"model_type {config.vision_config.model_type!r} is not one of {SUPPORTED_VISION_MODELS}",
            )
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.projector = ZRewardProjector(
            config.vision_config.hidden_size, config.text_config.hidden_size, config.projector_hidden_act
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.score_head = ScoreHead(config)
        self.post_init()

    # -- HF plumbing ----------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    @property
    def decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> ZRewardModel:
        """Load from a local directory of safetensors weights; pickle checkpoints are refused.

        Missing or mis-shaped weights and a config of another model type raise
        :class:`~zreward_deploy.errors.InvalidModelError` naming the directory. The weights load in
        ``dtype`` (``torch_dtype`` is accepted too), by default torch's default dtype (float32) whatever
        the folder stores (:func:`load_dtype`).
        """
        directory = Path(pretrained_model_name_or_path)
        check_model_dir(directory)
        kwargs.setdefault("use_safetensors", True)
        kwargs.setdefault("local_files_only", True)
        kwargs["dtype"] = load_dtype(kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None))
        if kwargs.get("config") is None:
            kwargs["config"] = load_config(directory)  # config errors name config.json
        try:
            with quiet_progress_bars():
                model, info = super().from_pretrained(directory, *args, output_loading_info=True, **kwargs)
        except InvalidModelError:
            raise
        except Exception as exc:  # config values transformers refuses, shapes torch refuses, ...
            raise InvalidModelError(
                str(directory), f"cannot load the model ({type(exc).__name__}: {exc})"
            ) from None
        missing = [
            k
            for k in info["missing_keys"]
            if not k.endswith("lm_head.weight") or not model.config.tie_word_embeddings
        ]
        if missing or info.get("mismatched_keys"):
            raise InvalidModelError(
                str(directory),
                f"weights do not match the config (missing {missing[:5]}, mismatched {info.get('mismatched_keys', [])[:5]})",
            )
        check_finite_weights(model, directory)
        return model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *args: Any,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        """``PreTrainedModel.save_pretrained`` under the file weight names of :func:`weights_for_file`
        (the same on transformers 4.57 and 5), without a progress bar.

        ``state_dict`` (module names, e.g. gathered from a wrapped model) defaults to ``self.state_dict()``.
        """
        weights = weights_for_file(self, self.state_dict() if state_dict is None else state_dict)
        with quiet_progress_bars():
            super().save_pretrained(save_directory, *args, state_dict=weights, **kwargs)

    # -- building blocks ------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [B, 3, S, S]`` -> image token embeddings ``[B, P, H_text]``."""
        dtype = next(self.vision_tower.parameters()).dtype
        features = self.vision_tower(pixel_values=pixel_values.to(dtype)).last_hidden_state
        if self.config.vision_feature_select == "patch":
            features = features[:, 1:]
        return self.projector(features)

    def _embed(self, image_embeds: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        text_embeds = self.get_input_embeddings()(text_ids)
        return torch.cat([image_embeds.to(text_embeds.dtype), text_embeds], dim=1)

    def _read_scores(self, hidden: torch.Tensor, return_logprobs: bool) -> ZRewardOutput:
        """``hidden [B, D, H]`` at the answer positions -> :class:`ZRewardOutput` with ``[B, D, ...]``."""
        b, d, h = hidden.shape
        out = self.score_head(hidden.reshape(b * d, h), self.get_output_embeddings().weight, return_logprobs)
        return reward_output(out, b, d)

    # -- all dimensions in one pass -------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        suffix_ids: Sequence[torch.Tensor],
        return_logprobs: bool = False,
    ) -> ZRewardOutput:
        """Score D dimensions in one pass.

        Args:
            pixel_values: ``[B, 3, S_img, S_img]`` preprocessed images.
            input_ids: ``[B, S]`` prompt part, right-padded.
            attention_mask: ``[B, S]`` 1 on prompt tokens, 0 on padding.
            suffix_ids: D one-dimensional id tensors, one per dimension, each ending at its answer position.
            return_logprobs: also return ``log q`` (for losses).

        Returns:
            :class:`ZRewardOutput` with ``probs [B, D, K]``, ``mean/var/std [B, D]``.
        """
        if len(suffix_ids) == 0:
            raise InvalidModelError("suffix_ids", "need at least one dimension suffix")
        batch, prompt_len = input_ids.shape
        device = input_ids.device
        lengths = [int(s.numel()) for s in suffix_ids]  # static: fixed by the rubric, not by the data
        suffix = torch.cat([s.to(device) for s in suffix_ids])
        image_embeds = self.encode_images(pixel_values)
        num_image = image_embeds.shape[1]
        text_ids = torch.cat([input_ids, suffix.unsqueeze(0).expand(batch, -1)], dim=1)
        embeds = self._embed(image_embeds, text_ids)

        mask, position_ids = multi_suffix_mask(attention_mask, num_image, lengths, embeds.dtype)
        hidden = self.decoder(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        ends = torch.tensor(lengths, device=device).cumsum(0) + (num_image + prompt_len - 1)
        return self._read_scores(hidden.index_select(1, ends), return_logprobs)

    # -- sampling (teacher generation) -----------------------------------------------------------------
    def generate_after_prompts(
        self,
        pixel_values: torch.Tensor,
        prompt_ids: Sequence[Sequence[int]],
        pad_token_id: int,
        **generate_kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample a continuation of ``[image][prompt_i]`` for each row -> ``(new tokens [N, T], raw logits
        [N, T, V])``: the language model's ``generate`` on left-padded embeddings (left padding keeps every
        row's last token at the end, where ``generate`` appends). ``generate_kwargs`` go to ``generate``."""
        image_embeds = self.encode_images(pixel_values)
        embed = self.get_input_embeddings()
        n, p, h = image_embeds.shape
        longest = max(len(x) for x in prompt_ids)
        embeds = image_embeds.new_zeros(n, longest + p, h, dtype=embed.weight.dtype)
        mask = torch.zeros(n, longest + p, dtype=torch.long, device=pixel_values.device)
        for i, ids in enumerate(prompt_ids):
            pad = longest - len(ids)
            text = embed(torch.tensor(ids, device=pixel_values.device))
            embeds[i, pad:] = torch.cat([image_embeds[i].to(text.dtype), text])
            mask[i, pad:] = 1
        with plain_generation_config(self.language_model):
            out = self.language_model.generate(
                inputs_embeds=embeds,
                attention_mask=mask,
                pad_token_id=pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
                **generate_kwargs,
            )
        return out.sequences, torch.stack(out.logits, dim=1)  # new tokens only (inputs were embeddings)

    # -- one dimension per sequence (plain causal) -----------------------------------------------------
    def decoder_hidden(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Hidden states ``[B, P + S, H]`` of ``[image][text]`` with plain causal attention.

        ``input_ids [B, S]`` right-padded with ``attention_mask [B, S]``.
        """
        image_embeds = self.encode_images(pixel_values)
        embeds = self._embed(image_embeds, input_ids)
        ones = attention_mask.new_ones(attention_mask.shape[0], image_embeds.shape[1])
        full_mask = torch.cat([ones, attention_mask], dim=1)
        return self.decoder(inputs_embeds=embeds, attention_mask=full_mask, use_cache=False).last_hidden_state

    def score_sequences(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        return_logprobs: bool = False,
        hidden: torch.Tensor | None = None,
    ) -> ZRewardOutput:
        """Score each right-padded sequence at its last valid token -> ``probs [B, 1, K]`` etc.

        ``hidden`` may be passed when the caller already ran :meth:`decoder_hidden` (teacher forcing).
        """
        if hidden is None:
            hidden = self.decoder_hidden(pixel_values, input_ids, attention_mask)
        num_image = hidden.shape[1] - input_ids.shape[1]
        answer = attention_mask.long().sum(1) - 1 + num_image  # >= num_image - 1 >= 0 by construction
        picked = hidden.gather(1, answer.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1]))
        return self._read_scores(picked, return_logprobs)


@contextlib.contextmanager
def plain_generation_config(model: nn.Module) -> Iterator[None]:
    """Inside the block, ``model.generate`` samples with transformers' defaults and the call's arguments
    only, not with the ``generation_config.json`` the checkpoint came with.

    A published checkpoint's generation config (repetition penalty, top-k, min-p, ...) would sample from
    another distribution than the one the recorded log-probs describe, which on-policy training (GRPO,
    GDSO) relies on; and both transformers lines fill every setting a call leaves unset from
    ``model.generation_config``. So that is swapped for a fresh ``GenerationConfig`` and put back after
    (not thread-safe against another ``generate`` on the same model).
    """
    from transformers import GenerationConfig

    checkpoint_defaults = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = checkpoint_defaults


def reward_output(out: ScoreHeadOutput, batch: int, dims: int) -> ZRewardOutput:
    """The score head's ``[B * D, ...]`` rows -> :class:`ZRewardOutput` with ``[B, D, ...]`` (std from var)."""
    k = out.probs.shape[-1]
    return ZRewardOutput(
        probs=out.probs.view(batch, dims, k),
        mean=out.mean.view(batch, dims),
        var=out.var.view(batch, dims),
        std=out.var.clamp_min(0).sqrt().view(batch, dims),
        logprobs=out.logprobs.view(batch, dims, k) if out.logprobs is not None else None,
    )


def multi_suffix_mask(
    attention_mask: torch.Tensor, num_image: int, suffix_lengths: Sequence[int], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """4-D additive mask and position ids for ``[image][prompt (padded)][suffix_1]...[suffix_D]``.

    Args:
        attention_mask: ``[B, S]`` prompt mask (right padding).
        num_image: P, the number of image tokens.
        suffix_lengths: the D suffix lengths.
        dtype: dtype of the additive mask (the embeddings' dtype).

    Returns:
        ``mask [B, 1, L, L]`` (0 where attention is allowed, the dtype's minimum elsewhere) and
        ``position_ids [B, L]`` with ``L = P + S + sum(suffix_lengths)``.

    A query may attend to key k iff k is not after it, k is not padding, and k is in the shared prefix or
    in the query's own suffix. Every query sees at least the image tokens, so no row is fully masked.
    """
    batch, prompt_len = attention_mask.shape
    device = attention_mask.device
    prefix = num_image + prompt_len
    lengths = torch.tensor(list(suffix_lengths), dtype=torch.long, device=device)
    total = prefix + int(sum(suffix_lengths))
    segment = torch.cat(
        [
            torch.zeros(prefix, dtype=torch.long, device=device),
            torch.repeat_interleave(torch.arange(1, len(suffix_lengths) + 1, device=device), lengths),
        ]
    )
    idx = torch.arange(total, device=device)
    causal = idx.view(1, -1) <= idx.view(-1, 1)  # [L_q, L_k]
    visible = (segment.view(1, -1) == 0) | (segment.view(1, -1) == segment.view(-1, 1))
    key_valid = torch.cat(
        [
            attention_mask.new_ones(batch, num_image),
            attention_mask,
            attention_mask.new_ones(batch, total - prefix),
        ],
        dim=1,
    ).bool()
    allowed = (causal & visible).unsqueeze(0) & key_valid.unsqueeze(1)  # [B, L_q, L_k]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )

    valid_prompt = attention_mask.long().sum(1, keepdim=True)  # [B, 1]
    offsets = torch.arange(total - prefix, device=device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths
    )
    position_ids = torch.cat(
        [idx[:prefix].unsqueeze(0).expand(batch, -1), num_image + valid_prompt + offsets.unsqueeze(0)], dim=1
    )
    return mask.unsqueeze(1), position_ids


def weights_for_file(model: ZRewardModel, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module weight names -> the names files carry (``vision_tower.vision_model.*`` for the tower on
    every transformers line; see ``_TOWER_IN_FILES``). Tensors are not copied."""
    if hasattr(model.vision_tower, "vision_model"):  # transformers 4.x: the module names are the file names
        return dict(state_dict)
    return {
        (_TOWER_IN_FILES + k[len(_TOWER) :] if k.startswith(_TOWER) else k): v for k, v in state_dict.items()
    }


def weights_from_file(model: ZRewardModel, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """File weight names -> ``model``'s module names (the inverse of :func:`weights_for_file`)."""
    if hasattr(model.vision_tower, "vision_model"):
        return dict(weights)
    return {
        (_TOWER + k[len(_TOWER_IN_FILES) :] if k.startswith(_TOWER_IN_FILES) else k): v
        for k, v in weights.items()
    }


def load_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The dtype to pass to ``from_pretrained``: ``dtype``, or torch's default dtype (float32) if None.

    Always passed explicitly because the two transformers lines differ when it is left out: 4.57 loads
    weights in torch's default dtype, 5 in the dtype the checkpoint's config records (``dtype="auto"``,
    ``modeling_utils._get_dtype``), so a bf16 folder or a bf16 Qwen checkpoint would load as bf16 under
    5 and as float32 under 4.57, and be trained or scored in another precision.
    """
    return torch.get_default_dtype() if dtype is None else dtype


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' progress bars inside the block and restore the setting after it.

    transformers 5 draws "Loading weights" and "Writing model shards" bars on stderr for every load and
    save, even of one small file (4.57 only for sharded checkpoints): noise in a command whose stderr
    carries its errors, and in a scorer loaded in a loop. The switch is process-wide in transformers, so
    it is scoped to the block rather than set once.
    """
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def save_model_dir(
    model: ZRewardModel,
    processor: Any,
    directory: str | os.PathLike,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save ``model`` and its processor to ``directory`` atomically: a reader (or a crash) sees the previous
    folder or the complete new one, never a mix (``fileio.atomic_directory``). Whether replacing an
    existing folder is allowed is the caller's decision (``fileio.check_output_dir``)."""
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        processor.save_pretrained(tmp)


def check_model_dir(directory: Path, model_types: Sequence[str] = (ZRewardConfig.model_type,)) -> None:
    """Refuse, naming the file, anything that would fail later or load a broken model: a missing or
    non-object ``config.json``, a model type not in ``model_types``, pickle-only weights, and safetensors
    files whose header is empty, corrupt or describes more bytes than the file holds (a truncated download
    or copy)."""
    if not directory.is_dir():
        raise InvalidModelError(str(directory), "is not a directory")
    config_file = directory / "config.json"
    if not config_file.exists():
        raise InvalidModelError(str(directory), "has no config.json")
    config = read_json_object(config_file, InvalidModelError)
    model_type = config.get("model_type")
    if model_type not in model_types:
        wanted = " or ".join(repr(t) for t in model_types)
        native = (
            " (a native VLM checkpoint: Scorer.from_pretrained, zreward score, eval, train and export onnx "
            "take it as it is; this reads only the package's own model folders, docs/model.md)"
            if model_type in NATIVE_FAMILIES
            else ""
        )
        raise InvalidModelError(
            str(directory), f"config.json is for model_type {model_type!r}, not {wanted}{native}"
        )
    weights = sorted(directory.glob("*.safetensors"))
    pickles = sorted(
        p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")
    )
    if not weights:
        if pickles:
            raise InvalidModelError(
                str(directory),
                f"only pickle checkpoints found ({', '.join(pickles)}); they can run arbitrary code when "
                "loaded and are refused. Convert them to safetensors (model.save_pretrained) first.",
            )
        raise InvalidModelError(str(directory), "has no *.safetensors weights")
    for path in weights:
        check_safetensors_file(path)


def check_safetensors_file(path: Path) -> None:
    """Open a safetensors file's header (cheap: no tensor is read) and check that the tensors it lists fit
    in the file; an empty, truncated or corrupt file raises :class:`InvalidModelError` naming it."""
    from safetensors import safe_open

    if not is_regular_file(path):
        raise InvalidModelError(str(path), "is not a regular file")
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError) and others
        raise InvalidModelError(
            str(path),
            f"is not a readable safetensors file ({type(exc).__name__}: {exc}); re-save or re-copy it",
        ) from None


def check_finite_weights(model: nn.Module, directory: Path) -> None:
    """Refuse weights holding NaN or infinity: such a model would score NaN for every input, silently.

    One float32 sum per tensor (NaN and infinity propagate through a sum; no per-element temporary).
    """
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if not tensor.is_floating_point() or tensor.is_meta or not tensor.numel():
                continue
            if not torch.isfinite(tensor.sum(dtype=torch.float32)):
                if torch.isfinite(tensor).all():  # finite values whose sum overflows fp32: fine
                    continue
                raise InvalidModelError(
                    str(directory), f"weight {name!r} holds NaN or infinite values; the checkpoint is corrupt"
                )
