"""Native Hugging Face VLM backbones (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM v2 and v1 / Idefics3): one-pass
scoring through their own forward.

Native-checkpoint support (docs/model.md, "Native VLM backbones"): the model, loading and saving a
checkpoint folder as published (:func:`load_native`, used by ``Scorer.from_pretrained`` and the trainers;
:func:`save_native`), teacher generation with the model's own ``generate``, tiny presets and realistic
sizes. Export lives in ``export/native_towers.py`` and ``export/native_graph.py``. A
:class:`NativeRewardModel` wraps a ``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``,
``Qwen3VLForConditionalGeneration``, ``SmolVLMForConditionalGeneration`` or
``Idefics3ForConditionalGeneration`` and scores D rubric dimensions
in one forward, with the same ``forward(pixel_values, input_ids, attention_mask, suffix_ids) ->
ZRewardOutput`` as :class:`~zreward_deploy.modeling.ZRewardModel`, so everything that calls a reward model
can call it.

The one-pass layout, per item (``N`` image tokens at a fixed resolution, the prompt right-padded)::

    [head ... <|vision_start|> <|image_pad|> x N <|vision_end|>][prompt, padded][suffix_1] ... [suffix_D]
     \\________________________ constant (``head_ids``) ______/

(SmolVLM: ``<fake_token_around_image><global-img><image> x N<fake_token_around_image>`` in the head.)

* The whole sequence goes through the HF model's own top-level forward: its vision tower encodes
  ``pixel_values`` (patchified here, in torch, from ``[B, 3, H, W]``; SmolVLM takes them as they are) and
  its forward writes the image features over the image placeholders (and adds Qwen3-VL's deepstack
  features in the first layers). Nothing of the HF model is re-implemented.
* Attention: the package's 4-D multi-suffix mask (:func:`~zreward_deploy.modeling.multi_suffix_mask`), with
  the constant head as the always-visible prefix: every suffix sees the head, the valid prompt and
  itself, never padding or another suffix. FlashAttention-2 cannot take such a mask: sdpa or eager.
* Positions, always passed (with a 4-D mask and no positions, Qwen2.5-VL raises and newer families
  silently use wrong ones). Qwen-VL: M-RoPE ``[3, B, L]`` in closed form, what the model's
  ``get_rope_index`` gives for this layout (text before the image counts up on all three axes; the image
  takes ``start + (0, row, col)``; text after it starts at ``start + max(rows, cols)``). SmolVLM: 1-D.
  Each suffix restarts at the last valid prompt position + 1.
* Read-out: the last hidden state at each suffix's last token, through the package's restricted score
  head (:func:`~zreward_deploy.kernels.score_head.score_head`) on the K score-token rows of ``lm_head``.

Tests compare this with the HF model's plain forward on each ``[head][prompt][suffix_d]`` separately,
reading the full-vocabulary logits (tests/test_native.py), on both transformers lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zreward_deploy.config import (
    DEFAULT_TEMPLATES,
    NATIVE_FAMILIES,
    SMOLVLM_FAMILIES,
    Rubric,
    ScoreScale,
    ScoringFields,
    check_training_record,
)
from zreward_deploy.errors import InvalidModelError
from zreward_deploy.fileio import read_json_object
from zreward_deploy.kernels.score_head import score_head
from zreward_deploy.modeling import ZRewardOutput, multi_suffix_mask, plain_generation_config, reward_output
from zreward_deploy.processing import PROCESSOR_FILE, RESAMPLE_MODES, ZRewardProcessor

TRANSFORMERS_5 = int(version("transformers").split(".")[0]) >= 5


def patchify(
    pixel_values: torch.Tensor, patch_size: int, temporal_patch_size: int, merge_size: int
) -> torch.Tensor:
    """``[B, C, H, W]`` normalised images -> ``[B * gh * gw, C * T * p * p]``, the Qwen-VL patch layout.

    The layout of ``Qwen2VLImageProcessor`` for one still image: the frame repeated ``T`` times, patches of
    ``p x p`` grouped by ``merge x merge`` windows (window rows, window columns, then the patches inside a
    window in raster order), each patch flattened as ``(C, T, p, p)``. One reshape/permute, so gradients
    reach the pixels. ``H`` and ``W`` must be multiples of ``p * merge``.
    """
    b, c, h, w = pixel_values.shape
    unit = patch_size * merge_size
    if h % unit or w % unit:
        raise InvalidModelError(
            "pixel_values", f"image size {h}x{w} is not a multiple of {unit} (patch x merge)"
        )
    gh, gw = h // patch_size, w // patch_size
    frames = pixel_values.unsqueeze(1).expand(b, temporal_patch_size, c, h, w)  # [B, T, C, H, W]
    x = frames.reshape(b, temporal_patch_size, c, gh // merge_size, merge_size, patch_size, gw // merge_size,
                       merge_size, patch_size)  # fmt: skip
    # -> [B, gh/m, gw/m, m, m, C, T, p, p]
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(b * gh * gw, c * temporal_patch_size * patch_size * patch_size)


def mrope_positions(
    head_len: int,
    image_at: int,
    grid: tuple[int, int],
    attention_mask: torch.Tensor,
    suffix_lengths: Sequence[int],
) -> torch.Tensor:
    """M-RoPE position ids ``[3, B, L]`` of the one-pass layout (module docstring), in closed form.

    Args:
        head_len: length of the constant head (text before the image, the image tokens, text after).
        image_at: index of the first image token in the head.
        grid: ``(rows, cols)`` of image tokens in the language model (after the merge).
        attention_mask: ``[B, S]`` prompt mask (right padding).
        suffix_lengths: the D suffix lengths.
    """
    rows, cols = grid
    device = attention_mask.device
    batch, prompt_len = attention_mask.shape
    n_image = rows * cols
    before = torch.arange(image_at, device=device).expand(3, -1)
    r = torch.arange(rows, device=device).repeat_interleave(cols)
    c = torch.arange(cols, device=device).repeat(rows)
    image = image_at + torch.stack([torch.zeros_like(r), r, c])
    after_start = image_at + max(rows, cols)
    tail = head_len - image_at - n_image  # head text after the image
    after = after_start + torch.arange(tail + prompt_len, device=device).expand(3, -1)
    prefix = torch.cat([before, image, after], dim=1)  # [3, head + S]
    lengths = torch.tensor(list(suffix_lengths), dtype=torch.long, device=device)
    offsets = torch.arange(int(lengths.sum()), device=device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths
    )
    # each suffix restarts right after the item's last valid prompt token
    start = after_start + tail + attention_mask.long().sum(1, keepdim=True)  # [B, 1]
    suffixes = (start + offsets.unsqueeze(0)).unsqueeze(0).expand(3, -1, -1)
    return torch.cat([prefix.unsqueeze(1).expand(-1, batch, -1), suffixes], dim=2)


class NativeRewardModel(nn.Module):
    """A native Qwen2-VL / Qwen2.5-VL / Qwen3-VL / SmolVLM model read out as a Z-Reward model (module
    docstring; SmolVLM: one image at its tower's size, 1-D positions).

    Args:
        model: the HF ``...ForConditionalGeneration`` (``config.model_type`` in :data:`NATIVE_FAMILIES`),
            with sdpa or eager attention.
        head_ids: the constant head: the chat template up to the prompt, with one run of exactly
            ``num_image_tokens`` image-placeholder ids (``config.image_token_id``).
        score_token_ids: the K single-token ids of the score values, in scale order.
        score_values: the K score values.
        image_size: ``(H, W)`` of ``pixel_values``; multiples of patch size x merge size.
        temperature: the score head's softmax temperature.
    """

    def __init__(
        self,
        model: nn.Module,
        head_ids: Sequence[int],
        score_token_ids: Sequence[int],
        score_values: Sequence[float],
        image_size: tuple[int, int],
        temperature: float = 1.0,
    ):
        super().__init__()
        config = model.config
        if config.model_type not in NATIVE_FAMILIES:
            raise InvalidModelError(
                "model", f"model_type {config.model_type!r} is not one of {NATIVE_FAMILIES}"
            )
        attn = getattr(config, "_attn_implementation", None)
        if attn not in (None, "sdpa", "eager"):
            raise InvalidModelError(
                "model", f"attention {attn!r} cannot take the one-pass 4-D mask; load it with sdpa or eager"
            )
        vision = config.vision_config
        self.model = model
        self.family = config.model_type
        self.patch_size = int(vision.patch_size)
        h, w = image_size
        if self.family in SMOLVLM_FAMILIES:
            # One image at the tower's own size (no splitting); the connector's pixel shuffle merges
            # scale_factor x scale_factor patches into one token.
            self.temporal_patch_size, self.merge_size = 1, int(config.scale_factor)
            side = int(vision.image_size)
            if (h, w) != (side, side):
                raise InvalidModelError(
                    "image_size", f"{h}x{w}: SmolVLM's vision tower reads {side}x{side} images"
                )
        else:
            self.temporal_patch_size = int(vision.temporal_patch_size)
            self.merge_size = int(vision.spatial_merge_size)
        self.image_size = (h, w)
        # image tokens in the language model, rows x cols
        self.grid = (token_grid_side(config, h), token_grid_side(config, w))
        self.num_image_tokens = self.grid[0] * self.grid[1]
        image_token_id = int(config.image_token_id)
        head = list(head_ids)
        pads = [i for i, t in enumerate(head) if t == image_token_id]
        if len(pads) != self.num_image_tokens or pads != list(range(pads[0], pads[0] + len(pads))):
            raise InvalidModelError(
                "head_ids",
                f"needs one run of {self.num_image_tokens} image tokens (id {image_token_id}), got {len(pads)}",
            )
        self.image_at = pads[0]
        # Placeholder tokens must never be sampled: a sampled image pad would make the HF forward expect
        # one more image feature than the image has. Generation suppresses them and every policy log-prob
        # (sampling's and teacher forcing's) is taken with them masked, so the two stay equal.
        fields = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        self.unsampleable_token_ids = tuple(
            sorted({int(getattr(config, f)) for f in fields if getattr(config, f, None) is not None})
        )
        self.register_buffer("head_ids", torch.tensor(head, dtype=torch.long), persistent=False)
        self.register_buffer(
            "score_ids", torch.tensor(list(score_token_ids), dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "values", torch.tensor(list(score_values), dtype=torch.float32), persistent=False
        )
        self.temperature = float(temperature)

    @property
    def config(self) -> Any:
        return self.model.config

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()

    @property
    def vision_tower(self) -> nn.Module:
        """The HF vision tower (Qwen-VL's ``visual`` with its merger; SmolVLM's ``vision_model``; the
        connector is trained with the language model), what ``TrainConfig.freeze_vision`` freezes."""
        inner = self.model.model
        return inner.vision_model if self.family in SMOLVLM_FAMILIES else inner.visual

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None
    ) -> None:
        """Activation checkpointing in the HF model's layers (vision and language)."""
        kwargs = dict(gradient_checkpointing_kwargs or {})
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers 5's name
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def save_pretrained(
        self, directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Write the HF model (``config.json`` and safetensors, in the checkpoint's own weight names) to
        ``directory``; ``state_dict`` is this wrapper's (``model.``-prefixed, e.g. gathered by the trainers)
        and replaces the module's weights in the file. The scoring settings are the processor's to write
        (:meth:`NativeConfig.save_settings`)."""
        from .modeling import quiet_progress_bars

        inner = None
        if state_dict is not None:
            inner = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
        with quiet_progress_bars():
            self.model.save_pretrained(directory, state_dict=inner, safe_serialization=True)
        portable_native_config(Path(directory, "config.json"))

    def mm_token_types(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """transformers 5's Qwen-VL forward computes M-RoPE from the token types (1 on image tokens)."""
        if self.family in SMOLVLM_FAMILIES or not TRANSFORMERS_5:
            return {}
        return {"mm_token_type_ids": (ids == self.config.image_token_id).int()}

    def hf_image_inputs(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[B, 3, H, W]`` normalised images -> the image arguments of the HF model's forward: the Qwen-VL
        patch layout and ``image_grid_thw``, or SmolVLM's ``[B, 1, 3, H, W]`` (one image per item)."""
        if self.family in SMOLVLM_FAMILIES:
            return {"pixel_values": pixel_values.unsqueeze(1)}
        return {
            "pixel_values": patchify(
                pixel_values, self.patch_size, self.temporal_patch_size, self.merge_size
            ),
            "image_grid_thw": self.image_grid_thw(pixel_values.shape[0], pixel_values.device),
        }

    def image_grid_thw(self, batch: int, device: torch.device) -> torch.Tensor:
        gh, gw = (s // self.patch_size for s in self.image_size)
        return torch.tensor([[1, gh, gw]], device=device).expand(batch, -1)

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
            pixel_values: ``[B, 3, H, W]`` normalised images at ``image_size``.
            input_ids: ``[B, S]`` the prompt part after the head, right-padded.
            attention_mask: ``[B, S]`` 1 on prompt tokens, 0 on padding.
            suffix_ids: D one-dimensional id tensors, each ending at its answer position.
            return_logprobs: also return ``log q`` (for losses).
        """
        if len(suffix_ids) == 0:
            raise InvalidModelError("suffix_ids", "need at least one dimension suffix")
        if tuple(pixel_values.shape[-2:]) != self.image_size:
            raise InvalidModelError(
                "pixel_values",
                f"images are {tuple(pixel_values.shape[-2:])}, the model reads {self.image_size}",
            )
        lengths = [int(s.numel()) for s in suffix_ids]
        hidden = self._last_hidden(pixel_values, input_ids, attention_mask, suffix_ids)
        ends = torch.tensor(lengths, device=input_ids.device).cumsum(0)
        ends = ends + (self.head_ids.numel() + input_ids.shape[1] - 1)
        return self._read(hidden.index_select(1, ends), return_logprobs)  # [B, D, hidden] at the answers

    def _last_hidden(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        suffix_ids: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Last hidden states of ``[head][text, right-padded][suffix_1]...[suffix_D]`` through the HF model's
        forward, with the multi-suffix mask and positions (no suffixes: plain causal over the padded text)."""
        batch = input_ids.shape[0]
        device = input_ids.device
        head = self.head_ids.to(device)
        lengths = [int(s.numel()) for s in suffix_ids]
        parts = [head.expand(batch, -1), input_ids]
        if suffix_ids:
            parts.append(torch.cat([s.to(device) for s in suffix_ids]).expand(batch, -1))
        dtype = self.get_input_embeddings().weight.dtype
        mask, positions = multi_suffix_mask(attention_mask, head.numel(), lengths, dtype)
        if self.family not in SMOLVLM_FAMILIES:  # M-RoPE; SmolVLM's Llama takes the 1-D positions as they are
            positions = mrope_positions(head.numel(), self.image_at, self.grid, attention_mask, lengths)
        out = self.model.model(
            input_ids=torch.cat(parts, dim=1),
            attention_mask=mask,
            position_ids=positions,
            use_cache=False,
            **self.hf_image_inputs(pixel_values.to(dtype)),
        )
        return out.last_hidden_state

    def _read(self, hidden: torch.Tensor, return_logprobs: bool) -> ZRewardOutput:
        b, d, h = hidden.shape
        scored = score_head(
            hidden.reshape(b * d, h),
            self.get_output_embeddings().weight,
            self.values,
            self.temperature,
            score_ids=self.score_ids,
            return_logprobs=return_logprobs,
        )
        return reward_output(scored, b, d)

    # -- one sequence per row (teacher forcing), and sampling with the model's own generate -----------
    def decoder_hidden(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Last hidden states ``[B, H + S, hidden]`` of ``[head][text]`` (``text`` right-padded), plain causal:
        the teacher-forcing pass (the head's image tokens are the ``H`` leading positions)."""
        return self._last_hidden(pixel_values, input_ids, attention_mask, [])

    def score_sequences(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        return_logprobs: bool = False,
        hidden: torch.Tensor | None = None,
    ) -> ZRewardOutput:
        """Score each right-padded ``[head][text]`` at its last valid token -> ``probs [B, 1, K]`` etc."""
        if hidden is None:
            hidden = self.decoder_hidden(pixel_values, input_ids, attention_mask)
        answer = attention_mask.long().sum(1) - 1 + self.head_ids.numel()
        picked = hidden.gather(1, answer.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1]))
        return self._read(picked, return_logprobs)

    def generate_after_prompts(
        self,
        pixel_values: torch.Tensor,
        prompt_ids: Sequence[Sequence[int]],
        pad_token_id: int,
        **generate_kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample a continuation of ``[head][prompt_i]`` per row with the HF model's own ``generate``
        (left-padded ids, its own positions and cache) -> ``(new tokens [N, T], raw logits [N, T, V])``;
        the placeholder tokens (``unsampleable_token_ids``) are never sampled and have logit -inf.

        The checkpoint's ``generation_config.json`` is not applied
        (:func:`~zreward_deploy.modeling.plain_generation_config`)."""
        head = self.head_ids.tolist()
        rows = [head + list(p) for p in prompt_ids]
        longest = max(len(r) for r in rows)
        device = pixel_values.device
        ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, longest - len(row) :] = torch.tensor(row, device=device)
            mask[i, longest - len(row) :] = 1
        dtype = self.get_input_embeddings().weight.dtype
        with plain_generation_config(self.model):
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                **self.hf_image_inputs(pixel_values.to(dtype)),
                **self.mm_token_types(ids),
                pad_token_id=pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
                suppress_tokens=list(self.unsampleable_token_ids),
                **generate_kwargs,
            )
        logits = torch.stack(out.logits, dim=1)  # raw: before temperature, top-p and the suppression
        logits[..., list(self.unsampleable_token_ids)] = float("-inf")
        return out.sequences[:, longest:], logits


# --------------------------------------------------------------------------------------------------
# Scoring settings, loading and saving a native checkpoint folder
# --------------------------------------------------------------------------------------------------

SETTINGS_FILE = "zreward_native.json"
"""The package's scoring settings beside a native checkpoint (optional; defaults without it)."""
DEFAULT_HEAD = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
"""The constant head: the chat turn's opening and one image placeholder, expanded to the image's tokens."""
NATIVE_TEMPLATES = {
    **DEFAULT_TEMPLATES,
    "student_prompt": DEFAULT_TEMPLATES["student_prompt"].removeprefix("<|im_start|>user\n"),
    "teacher_prompt": DEFAULT_TEMPLATES["teacher_prompt"].removeprefix("<|im_start|>user\n"),
}
"""The package's templates with the prompt parts following the head (the head opens the user turn)."""
DEFAULT_IMAGE_SIZE = 448
"""The Qwen-VL families' default resolution; SmolVLM's is its vision tower's own size."""
# image normalisation of the families' own processors when a folder has no preprocessor_config.json
_FAMILY_NORMALISATION = {
    "qwen2_vl": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "qwen2_5_vl": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "qwen3_vl": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "smolvlm": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "idefics3": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
IMAGE_PLACEHOLDER = {"qwen2_vl": "<|image_pad|>", "qwen2_5_vl": "<|image_pad|>", "qwen3_vl": "<|image_pad|>",
                     "smolvlm": "<image>", "idefics3": "<image>"}  # fmt: skip
"""The text of the image token in each family's tokenizer: the head holds it once."""
DEFAULT_HEADS = {
    **dict.fromkeys(("qwen2_vl", "qwen2_5_vl", "qwen3_vl"), DEFAULT_HEAD),
    **dict.fromkeys(
        ("smolvlm", "idefics3"),
        "<|im_start|>User:<fake_token_around_image><global-img><image><fake_token_around_image>",
    ),
}
"""The default head of each family: its chat turn's opening and one image placeholder."""
_SETTINGS = ("image_size", "head", "score_scale", "rubric", "templates", "max_prompt_tokens",
             "score_temperature", "training", "resample")  # fmt: skip


class NativeConfig(ScoringFields):
    """The scoring settings of a native model: what :class:`~zreward_deploy.processing.ZRewardProcessor`
    and the scorers read from a config (rubric, score scale, templates, image size and normalisation,
    training record), without the LLaVA-style model's sub-configs.

    ``image_size`` is the fixed square resolution images are resized to (a multiple of the family's patch
    size x merge size); the checkpoint's processor would pick one per image (dynamic resolution).
    ``resample``: the resize filter, ``bicubic`` (antialiased, clipped to [0, 1]) by default, what the
    Qwen-VL processors use with PIL (SmolVLM's use Lanczos, which torch does not have); ``bilinear`` is the
    package models' filter.
    """

    model_type = "zreward_native"

    def __init__(
        self,
        family: str,
        image_size: int = DEFAULT_IMAGE_SIZE,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        head: str | None = None,
        score_scale: Mapping[str, Sequence] | None = None,
        rubric: Sequence[Mapping[str, Any]] | None = None,
        templates: Mapping[str, str] | None = None,
        max_prompt_tokens: int = 256,
        score_temperature: float = 1.0,
        training: Mapping[str, Any] | None = None,
        resample: str = "bicubic",
    ):
        if family not in NATIVE_FAMILIES:
            raise InvalidModelError("model_type", f"{family!r} is not one of {NATIVE_FAMILIES}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise InvalidModelError("image_size", f"must be a positive integer, got {image_size!r}")
        head = DEFAULT_HEADS[family] if head is None else head
        placeholder = IMAGE_PLACEHOLDER[family]
        if not isinstance(head, str) or head.count(placeholder) != 1:
            raise InvalidModelError("head", f"must be a string with exactly one {placeholder}")
        if not score_temperature > 0:
            raise InvalidModelError("score_temperature", f"must be > 0, got {score_temperature}")
        unknown = set(templates or {}) - set(NATIVE_TEMPLATES)
        if unknown:
            raise InvalidModelError("templates", f"unknown template names {sorted(unknown)}")
        self.family = family
        self.image_size = image_size
        self.image_mean = [float(x) for x in image_mean]
        self.image_std = [float(x) for x in image_std]
        self.head = head
        self.score_scale = (ScoreScale(**score_scale) if score_scale is not None else ScoreScale()).to_dict()
        self.score_token_ids: list[int] | None = None  # resolved from the checkpoint's tokenizer
        self.rubric = Rubric(tuple(rubric)).to_list() if rubric is not None else Rubric().to_list()
        self.templates = {**NATIVE_TEMPLATES, **(templates or {})}
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.score_temperature = float(score_temperature)
        self.training = check_training_record(training)
        if resample not in RESAMPLE_MODES:
            raise InvalidModelError("resample", f"must be one of {RESAMPLE_MODES}, got {resample!r}")
        self.resample = resample

    def save_settings(self, directory: str | os.PathLike) -> None:
        """Write ``zreward_native.json`` and the image normalisation (``preprocessor_config.json``) into a
        native folder (what :meth:`ZRewardProcessor.save_pretrained` adds for a native model)."""
        from .fileio import atomic_write_text

        pre = {"image_mean": self.image_mean, "image_std": self.image_std}
        atomic_write_text(Path(directory, "preprocessor_config.json"), json.dumps(pre, indent=2) + "\n")
        atomic_write_text(Path(directory, SETTINGS_FILE), json.dumps(self.settings(), indent=2) + "\n")

    def settings(self) -> dict[str, Any]:
        """The ``zreward_native.json`` of these settings (templates only where they differ)."""
        templates = {k: v for k, v in self.templates.items() if NATIVE_TEMPLATES[k] != v}
        out = {
            "image_size": self.image_size, "head": self.head, "score_scale": self.score_scale,
            "rubric": self.rubric, "templates": templates, "max_prompt_tokens": self.max_prompt_tokens,
            "score_temperature": self.score_temperature, "training": self.training, "resample": self.resample,
        }  # fmt: skip
        return out


def head_token_ids(tokenizer: Any, head: str, image_token_id: int, num_image_tokens: int) -> list[int]:
    """The head's ids with its one image placeholder expanded to ``num_image_tokens`` copies."""
    ids = tokenizer.encode(head, add_special_tokens=False)
    if ids.count(image_token_id) != 1:
        raise InvalidModelError(
            "head",
            f"encodes to {ids.count(image_token_id)} image tokens (id {image_token_id}), expected exactly one: "
            "the tokenizer does not know the model's image placeholder",
        )
    at = ids.index(image_token_id)
    return [*ids[:at], *[image_token_id] * num_image_tokens, *ids[at + 1 :]]


def is_native_dir(directory: str | os.PathLike) -> bool:
    """Whether ``directory/config.json`` names a native family (:data:`NATIVE_FAMILIES`)."""
    path = Path(directory, "config.json")
    try:
        return read_json_object(path, InvalidModelError).get("model_type") in NATIVE_FAMILIES
    except InvalidModelError:
        return False


def read_native_config(directory: str | os.PathLike) -> NativeConfig:
    """The scoring settings of a native checkpoint folder (:class:`NativeConfig`: ``zreward_native.json``
    over the defaults, the image normalisation of ``preprocessor_config.json``), without loading the model;
    every failure an :class:`InvalidModelError` naming the file."""
    directory = Path(directory)
    hf_fields = read_json_object(directory / "config.json", InvalidModelError)
    family = hf_fields.get("model_type")
    if family not in NATIVE_FAMILIES:
        raise InvalidModelError(
            str(directory / "config.json"), f"model_type {family!r} is not one of {NATIVE_FAMILIES}"
        )
    settings: dict[str, Any] = {}
    if (directory / SETTINGS_FILE).exists():
        settings = read_json_object(directory / SETTINGS_FILE, InvalidModelError)
        unknown = sorted(set(settings) - set(_SETTINGS))
        if unknown:
            raise InvalidModelError(
                str(directory / SETTINGS_FILE), f"unknown settings {unknown}; known: {list(_SETTINGS)}"
            )
    mean, std = _FAMILY_NORMALISATION[family]
    if (directory / "preprocessor_config.json").exists():
        pre = read_json_object(directory / "preprocessor_config.json", InvalidModelError)
        mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
    if family in SMOLVLM_FAMILIES and "image_size" not in settings:  # the tower's own size
        vision = hf_fields.get("vision_config") or {}
        settings = {**settings, "image_size": int(vision.get("image_size", 512))}
    try:
        config = NativeConfig(family, image_mean=mean, image_std=std, **settings)
    except InvalidModelError as exc:
        raise InvalidModelError(str(directory / SETTINGS_FILE), f"{exc.item}: {exc.reason}") from None
    except TypeError as exc:
        raise InvalidModelError(str(directory / SETTINGS_FILE), str(exc)) from None
    return config


def load_native_processor(directory: str | os.PathLike) -> ZRewardProcessor:
    """The :class:`ZRewardProcessor` of a native folder (a checkpoint, or an ONNX export of one): the
    tokenizer, the scoring settings (:func:`read_native_config`), ``zreward_processor.json``; without the
    model. Score tokens must be single tokens of the tokenizer; every failure names the folder or file."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    config = read_native_config(directory)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise InvalidModelError(
            str(directory), f"no usable tokenizer ({type(exc).__name__}: {exc})"
        ) from None
    extra: dict[str, Any] = {}
    if (directory / PROCESSOR_FILE).exists():  # written by ZRewardProcessor.save_pretrained
        extra = read_json_object(directory / PROCESSOR_FILE, InvalidModelError)
        if set(extra) - {"max_image_pixels"}:
            raise InvalidModelError(
                str(directory / PROCESSOR_FILE),
                f"unknown settings {sorted(set(extra) - {'max_image_pixels'})}",
            )
    try:
        processor = ZRewardProcessor(tokenizer, config, **extra)  # checks the score tokens are single tokens
        processor.suffix_ids(config.get_rubric().names)  # a tokenizer that loads but cannot encode
    except InvalidModelError as exc:
        if exc.item not in extra:
            raise
        raise InvalidModelError(str(directory / PROCESSOR_FILE), exc.reason) from None
    config.score_token_ids = processor.score_token_ids
    return processor


def load_native(
    directory: str | os.PathLike, dtype: torch.dtype | None = None, attn_implementation: str = "sdpa"
) -> tuple[NativeRewardModel, ZRewardProcessor]:
    """A native checkpoint folder -> ``(NativeRewardModel, processor)``, with no conversion step.

    The folder holds the HF checkpoint as published (``config.json``, ``*.safetensors``, tokenizer files,
    ``preprocessor_config.json``) and optionally ``zreward_native.json`` (:class:`NativeConfig`'s
    settings: rubric, score scale, templates, head, image size, ...). Score tokens come from the
    checkpoint's tokenizer and must be single tokens. Pickle-only weights are refused; every failure is an
    :class:`InvalidModelError` naming the folder or the file.
    """
    from transformers import AutoModelForImageTextToText

    from .modeling import check_model_dir, load_dtype, quiet_progress_bars

    directory = Path(directory)
    check_model_dir(directory, NATIVE_FAMILIES)
    processor = load_native_processor(directory)
    try:
        with quiet_progress_bars():
            hf = AutoModelForImageTextToText.from_pretrained(
                str(directory), local_files_only=True, use_safetensors=True, dtype=load_dtype(dtype),
                attn_implementation=attn_implementation,
            )  # fmt: skip
    except Exception as exc:
        raise InvalidModelError(
            str(directory), f"cannot load the model ({type(exc).__name__}: {exc})"
        ) from None
    try:
        model = native_reward_model(hf.eval(), processor.tokenizer, processor.config)
    except InvalidModelError as exc:
        raise InvalidModelError(str(directory / SETTINGS_FILE), f"{exc.item}: {exc.reason}") from None
    return model, processor


def portable_native_config(path: Path) -> None:
    """Rewrite a ``config.json`` that transformers 5 wrote so that 4.57 reads it too: 5 states RoPE as one
    ``rope_parameters`` dict, which 4.57's Qwen-VL configs do not read (they fail on the missing
    ``rope_scaling``, or fall back to another base); the 4.57 fields are added beside it
    (:func:`~zreward_deploy.config.portable_rope_fields`), in the text config and at the top level."""
    from .config import portable_rope_fields
    from .fileio import atomic_write_text

    fields = read_json_object(path, InvalidModelError)
    before = json.dumps(fields, sort_keys=True)
    fields = portable_rope_fields(fields)
    if isinstance(fields.get("text_config"), dict):
        fields["text_config"] = portable_rope_fields(fields["text_config"])
    if json.dumps(fields, sort_keys=True) != before:
        atomic_write_text(path, json.dumps(fields, indent=2, sort_keys=True) + "\n")


def native_weights_from_folder(
    model: NativeRewardModel, directory: str | os.PathLike
) -> dict[str, torch.Tensor]:
    """The weights of a folder that :meth:`NativeRewardModel.save_pretrained` wrote, named as ``model``'s
    state dict (``model.``-prefixed): read through the HF class's own ``from_pretrained``, which maps the
    checkpoint's weight names onto the modules' on either transformers line."""
    from .modeling import quiet_progress_bars

    dtype = model.get_input_embeddings().weight.dtype
    with quiet_progress_bars():
        hf = type(model.model).from_pretrained(
            str(directory), local_files_only=True, use_safetensors=True, dtype=dtype,
            attn_implementation=model.config._attn_implementation,
        )  # fmt: skip
    return {f"model.{k}": v for k, v in hf.state_dict().items()}


def token_grid_side(hf_config: Any, side: int) -> int:
    """Language-model image tokens along an image side of ``side`` pixels. Qwen-VL: ``side`` must be a
    multiple of patch size x merge size. SmolVLM: its patch convolution drops the pixels past the last
    whole patch (SmolVLM-Instruct reads 384 px in 27 patches of 14), and the pixel shuffle's scale factor
    must divide the patch count."""
    vision = hf_config.vision_config
    patch = int(vision.patch_size)
    if hf_config.model_type in SMOLVLM_FAMILIES:
        scale = int(hf_config.scale_factor)
        if (side // patch) % scale:
            raise InvalidModelError(
                "image_size", f"{side} px is {side // patch} patches of {patch}, not a multiple of the pixel "
                f"shuffle's {scale}",
            )  # fmt: skip
        return side // patch // scale
    unit = patch * int(vision.spatial_merge_size)
    if side % unit:
        raise InvalidModelError("image_size", f"{side} is not a multiple of {unit} (patch x merge)")
    return side // unit


def native_reward_model(hf: nn.Module, tokenizer: Any, config: NativeConfig) -> NativeRewardModel:
    """The :class:`NativeRewardModel` of an HF model with these settings (the head expanded to the image's
    tokens at ``config.image_size``)."""
    n = token_grid_side(hf.config, config.image_size) ** 2
    head = head_token_ids(tokenizer, config.head, int(hf.config.image_token_id), n)
    return NativeRewardModel(
        hf, head, config.score_token_ids, config.get_score_scale().values, (config.image_size, config.image_size),
        temperature=config.score_temperature,
    )  # fmt: skip


def save_native(model: NativeRewardModel, processor: ZRewardProcessor, directory: str | os.PathLike) -> None:
    """Write a native checkpoint folder that :func:`load_native` reads: the HF model (safetensors), the
    tokenizer, ``preprocessor_config.json`` and ``zreward_native.json``."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


# --------------------------------------------------------------------------------------------------
# Tiny presets (random weights, built from config; for tests and the demo)
# --------------------------------------------------------------------------------------------------

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
SMOLVLM_TOKENS = ["<fake_token_around_image>", "<global-img>", "<image>"]


def build_native_preset(
    family: str,
    seed: int = 0,
    image_size: int = 32,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
) -> tuple[NativeRewardModel, ZRewardProcessor]:
    """A tiny native model of ``family`` (random weights, the package's offline tokenizer with the Qwen-VL
    vision tokens added): LM hidden 64, 2 layers; vision depth 2, patch 4, merge 2, so ``image_size`` 32
    gives 16 image tokens. ``text`` and ``vision`` override fields of the two sub-configs (a larger model
    for benchmarks; a ``vocab_size`` beyond the tokenizer's leaves the extra rows unused)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from .tokenization import build_tokenizer

    if family not in NATIVE_FAMILIES:
        raise InvalidModelError("family", f"{family!r} is not one of {NATIVE_FAMILIES}")
    tokenizer = build_tokenizer()
    smol = family in SMOLVLM_FAMILIES
    added = SMOLVLM_TOKENS if smol else VISION_TOKENS
    tokenizer.add_tokens(added, special_tokens=True)  # the API both transformers lines have
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in added}
    common_ids = dict(bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    if smol:
        special = dict(image_token_id=ids["<image>"], **common_ids)
    else:
        special = dict(
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], **common_ids,
        )  # fmt: skip
    text_fields = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        tie_word_embeddings=False, **common_ids,
        # stated, not left to the defaults: transformers 5 changed Qwen3-VL's (5e6 -> 5e5)
        rope_theta=1e5 if smol else 1e6,
    )  # fmt: skip
    common = dict(patch_size=4, spatial_merge_size=2, temporal_patch_size=2, num_heads=2, depth=2)
    extra: dict[str, Any] = {}
    if family == "qwen2_vl":
        text_fields["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
        vision_fields = dict(embed_dim=32, hidden_size=64, **common)
    elif family == "qwen2_5_vl":
        text_fields["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
        vision_fields = dict(hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=16,
                             fullatt_block_indexes=[1], **common)  # fmt: skip
    elif family == "qwen3_vl":
        text_fields["rope_scaling"] = {
            "rope_type": "default",
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
        }
        vision_fields = dict(hidden_size=32, intermediate_size=64, out_hidden_size=64, num_position_embeddings=16,
                             deepstack_visual_indexes=[0, 1], **common)  # fmt: skip
    else:  # SmolVLM: a SigLIP-style tower at the image size, a Llama LM, pixel shuffle by 2
        text_fields["model_type"] = "llama"
        vision_fields = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=image_size, patch_size=4)  # fmt: skip
        extra["scale_factor"] = 2
    text_fields.update(text or {})
    vision_fields.update(vision or {})
    hf_config = AutoConfig.for_model(
        family, text_config=text_fields, vision_config=vision_fields, **special, **extra
    )
    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    hf = AutoModelForImageTextToText.from_config(hf_config, attn_implementation="sdpa").eval()
    mean, std = _FAMILY_NORMALISATION[family]
    config = NativeConfig(family, image_size=image_size, image_mean=mean, image_std=std,
                          training={"method": "none", "dimensions": []})  # fmt: skip
    processor = ZRewardProcessor(tokenizer, config)
    config.score_token_ids = processor.score_token_ids
    return native_reward_model(hf, tokenizer, config), processor


# --------------------------------------------------------------------------------------------------
# Realistic sizes (random weights; for GPU benchmarks)
# --------------------------------------------------------------------------------------------------
# Each entry is a published checkpoint's config.json, reduced to the fields that fix the shapes and the
# special-token ids; the sources are cited per entry. Where a published config.json leaves a field out,
# the checkpoint relies on the transformers class default, which is written out here (so a default that
# changes in a later transformers cannot change the size silently). tests/test_native_sizes.py checks each
# against the published parameter count on both transformers lines.

_QWEN_VL_TOKENS = dict(
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    bos_token_id=151643, eos_token_id=151645,
)  # fmt: skip
"""The Qwen-VL special-token ids, the same in every published Qwen2-VL, Qwen2.5-VL and Qwen3-VL config.json."""

# fmt: off
REALISTIC_SIZES: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    # Qwen/Qwen2-VL-2B-Instruct: config.json as republished by Qwen itself with the same weights in
    # https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct-AWQ/blob/refs%2Fpr%2F1/config.json ("_name_or_path":
    # "Qwen/Qwen2-VL-2B-Instruct...") and verbatim in onnx-community/Qwen2-VL-2B-Instruct. Its vision_config
    # holds only hidden_size 1536 (the merger's output, = the LM width), in_chans and patch size 14; depth 32,
    # embed_dim 1280, mlp_ratio 4, 16 heads, merge 2 and temporal patch 2 are Qwen2VLVisionConfig's defaults.
    # 2,208,985,600 parameters, tied embeddings (Qwen2-VL-2B's model.safetensors.index.json: total_size
    # 4,417,971,200 bytes in bf16).
    "qwen2-vl-2b": (
        "qwen2_vl",
        dict(
            vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
            num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-6,
            max_position_embeddings=32768, rope_theta=1e6, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        ),
        dict(
            depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2,
        ),
        _QWEN_VL_TOKENS,
    ),
    # Qwen2.5-VL-3B-Instruct's published shapes (3.75 B parameters, tied embeddings)
    "qwen2.5-vl-3b": (
        "qwen2_5_vl",
        dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
            num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-6,
            max_position_embeddings=128000, rope_theta=1e6, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        ),
        dict(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
            hidden_act="silu",
        ),
        _QWEN_VL_TOKENS,
    ),
    # Qwen/Qwen3-VL-2B-Instruct, the smallest published Qwen3-VL: its config.json (text_config /
    # vision_config as vendored in third-party Qwen3-VL config tests; the 4B's, same layout, at
    # https://huggingface.co/TechCarbasa/MyModels/commit/400bbbf998ac875feb9b2182d409b81aa3601ac8).
    # 2,127,532,032 parameters, tied embeddings: the single model.safetensors of
    # https://huggingface.co/Qwen/Qwen3-VL-2B-Instruct/tree/main is listed at 4.26 GB (bf16).
    "qwen3-vl-2b": (
        "qwen3_vl",
        dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
            rms_norm_eps=1e-6, max_position_embeddings=262144, rope_theta=5e6,
            rope_scaling={"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True},
        ),
        dict(
            depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
            deepstack_visual_indexes=[5, 11, 17], hidden_act="gelu_pytorch_tanh",
        ),
        _QWEN_VL_TOKENS,
    ),
    # HuggingFaceTB/SmolVLM-256M-Instruct (published as model_type idefics3, built as such). config.json as copied in
    # https://huggingface.co/Mattimax/DATA-AI_Smol256M-Instruct/blob/main/config.json ("_name_or_path":
    # "HuggingFaceTB/SmolVLM-256M-Instruct"): SmolLM2-135M-shaped text model, SigLIP base-patch16-512 tower,
    # pixel shuffle 4 (64 image tokens), untied embeddings; <image> is id 49190, <end_of_utterance> 49279
    # (generation_config.json). 256,484,928 parameters: model.safetensors 513 MB in bf16 (256M params per the
    # Hub's safetensors metadata).
    "smolvlm-256m": (
        "idefics3",
        dict(
            model_type="llama", vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
            rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1,
            eos_token_id=49279, pad_token_id=2,
        ),
        dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=512,
            patch_size=16,
        ),
        dict(image_token_id=49190, scale_factor=4, pad_token_id=2),
    ),
    # HuggingFaceTB/SmolVLM-Instruct (SmolVLM 2.2B; model_type idefics3 as published, built as such): config.json as
    # copied in https://huggingface.co/Pinatpong/SmolVLM-Instruct/blob/main/config.json and
    # chflame163/ComfyUI_LayerStyle (models/smol/SmolVLM-Instruct/config.json): SmolLM2-1.7B-shaped text model
    # (32 heads, no GQA), SigLIP so400m-patch14-384 tower (27 x 27 patches: the patch conv drops the last
    # 6 px), pixel shuffle 3 (81 image tokens), untied embeddings, <image> id 49153.
    # 2,246,272,880 parameters (2.25B per the Hub's safetensors metadata).
    "smolvlm-2.2b": (
        "idefics3",
        dict(
            model_type="llama", vocab_size=49155, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
            num_attention_heads=32, num_key_value_heads=32, head_dim=64, max_position_embeddings=16384,
            rope_theta=273768.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
            pad_token_id=2,
        ),
        dict(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384,
            patch_size=14,
        ),
        dict(image_token_id=49153, scale_factor=3, pad_token_id=2),
    ),
}
# fmt: on
"""Named realistic shapes: ``name -> (family, text config fields, vision config fields, top-level fields)``; the
top-level fields hold the checkpoint's special-token ids (and SmolVLM's pixel-shuffle ``scale_factor``)."""


def realistic_config(name: str) -> Any:
    """The HF config of a realistic size (:data:`REALISTIC_SIZES`), with the published checkpoint's
    special-token ids; build the model from it (e.g. on the meta device, or on a GPU in bf16) with
    ``AutoModelForImageTextToText.from_config``. No weights are fetched: they are random."""
    from transformers import AutoConfig

    if name not in REALISTIC_SIZES:
        raise InvalidModelError("size", f"{name!r} is not one of {sorted(REALISTIC_SIZES)}")
    family, text, vision, top = REALISTIC_SIZES[name]
    config = AutoConfig.for_model(family, text_config=dict(text), vision_config=dict(vision), **top)
    # the top-level flag decides the tying on both transformers lines; the text config's is the published one
    config.tie_word_embeddings = bool(text.get("tie_word_embeddings", False))
    return config
