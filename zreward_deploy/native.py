"""Native Hugging Face VLM backbones (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): one-pass scoring through their own forward.

First part of native-checkpoint support (docs/model.md, "Native VLM backbones"): the model side. A
:class:`NativeRewardModel` wraps a ``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration`` or ``Qwen3VLForConditionalGeneration`` and scores D rubric dimensions in one forward, with the same
``forward(pixel_values, input_ids, attention_mask, suffix_ids) -> ZRewardOutput`` as
:class:`~zreward_deploy.modeling.ZRewardModel`, so everything that calls a reward model can call it.

The one-pass layout, per item (``N`` image tokens at a fixed resolution, the prompt right-padded)::

    [head ... <|vision_start|> <|image_pad|> x N <|vision_end|>][prompt, padded][suffix_1] ... [suffix_D]
     \\________________________ constant (``head_ids``) ______/

* The whole sequence goes through the HF model's own top-level forward: its vision tower encodes
  ``pixel_values`` (patchified here, in torch, from ``[B, 3, H, W]``) and its forward writes the image
  features over the ``<|image_pad|>`` positions (and adds Qwen3-VL's deepstack features in the first
  layers). Nothing of the HF model is re-implemented.
* Attention: the package's 4-D multi-suffix mask (:func:`~zreward_deploy.modeling.multi_suffix_mask`), with
  the constant head as the always-visible prefix: every suffix sees the head, the valid prompt and
  itself, never padding or another suffix. FlashAttention-2 cannot take such a mask: sdpa or eager.
* Positions (M-RoPE, ``[3, B, L]``): in closed form, what the model's ``get_rope_index`` gives for this
  layout (text before the image counts up on all three axes; the image takes ``start + (0, row, col)``;
  text after it starts at ``start + max(rows, cols)``); each suffix restarts at the last valid prompt
  position + 1. They are always passed: with a 4-D mask and no positions, Qwen2.5-VL raises and newer
  families silently use wrong ones.
* Read-out: the last hidden state at each suffix's last token, through the package's restricted score
  head on the K score-token rows of ``lm_head`` (:class:`~zreward_deploy.modeling.ScoreHead`).

Tests compare this with the HF model's plain forward on each ``[head][prompt][suffix_d]`` separately,
reading the full-vocabulary logits (tests/test_native.py), on both transformers lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from zreward_deploy.errors import InvalidModelError
from zreward_deploy.kernels.score_head import score_head
from zreward_deploy.modeling import ZRewardOutput, multi_suffix_mask

NATIVE_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
"""``model_type`` of the HF checkpoints :class:`NativeRewardModel` takes."""


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
    lengths = torch.tensor(list(suffix_lengths), device=device)
    offsets = torch.arange(int(lengths.sum()), device=device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths
    )
    # each suffix restarts right after the item's last valid prompt token
    start = after_start + tail + attention_mask.long().sum(1, keepdim=True)  # [B, 1]
    suffixes = (start + offsets.unsqueeze(0)).unsqueeze(0).expand(3, -1, -1)
    return torch.cat([prefix.unsqueeze(1).expand(-1, batch, -1), suffixes], dim=2)


class NativeRewardModel(nn.Module):
    """A native Qwen2-VL / Qwen2.5-VL / Qwen3-VL model read out as a Z-Reward model (module docstring).

    Args:
        model: the HF ``...ForConditionalGeneration`` (``config.model_type`` in :data:`NATIVE_FAMILIES`),
            with sdpa or eager attention.
        head_ids: the constant head: the chat template up to the prompt, with exactly
            ``num_image_tokens`` image-pad ids after one vision-start id.
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
        self.patch_size = int(vision.patch_size)
        self.temporal_patch_size = int(vision.temporal_patch_size)
        self.merge_size = int(vision.spatial_merge_size)
        h, w = image_size
        unit = self.patch_size * self.merge_size
        if h % unit or w % unit:
            raise InvalidModelError("image_size", f"{h}x{w} is not a multiple of {unit} (patch x merge)")
        self.image_size = (h, w)
        self.grid = (h // unit, w // unit)  # image tokens in the language model, rows x cols
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
        batch, prompt_len = input_ids.shape
        device = input_ids.device
        lengths = [int(s.numel()) for s in suffix_ids]
        suffix = torch.cat([s.to(device) for s in suffix_ids])
        head = self.head_ids.to(device)
        ids = torch.cat([head.expand(batch, -1), input_ids, suffix.expand(batch, -1)], dim=1)
        dtype = self.model.get_input_embeddings().weight.dtype
        mask, _ = multi_suffix_mask(attention_mask, head.numel(), lengths, dtype)
        positions = mrope_positions(head.numel(), self.image_at, self.grid, attention_mask, lengths)
        out = self.model.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            pixel_values=patchify(
                pixel_values.to(dtype), self.patch_size, self.temporal_patch_size, self.merge_size
            ),
            image_grid_thw=self.image_grid_thw(batch, device),
            use_cache=False,
        )
        hidden = out.last_hidden_state
        ends = torch.tensor(lengths, device=device).cumsum(0) + (head.numel() + prompt_len - 1)
        picked = hidden.index_select(1, ends)  # [B, D, H]
        b, d, h = picked.shape
        scored = score_head(
            picked.reshape(b * d, h),
            self.model.get_output_embeddings().weight,
            self.values,
            self.temperature,
            score_ids=self.score_ids,
            return_logprobs=return_logprobs,
        )
        k = scored.probs.shape[-1]
        return ZRewardOutput(
            probs=scored.probs.view(b, d, k),
            mean=scored.mean.view(b, d),
            var=scored.var.view(b, d),
            std=scored.var.clamp_min(0).sqrt().view(b, d),
            logprobs=scored.logprobs.view(b, d, k) if scored.logprobs is not None else None,
        )
