"""The exported graph of a native VLM (:class:`~zreward_deploy.native.NativeRewardModel`), and what an export
folder of one holds.

:class:`NativeOnnxModel` takes the graph contract's three tensors and computes what
``NativeRewardModel.forward`` computes, in a form a tracer keeps dynamic in batch and text length:

* the image through the family's static tower (:mod:`.native_towers`) instead of the HF tower's packed
  ``grid_thw`` path;
* the token embeddings of ``[head][prompt, padded][suffix_1] ... [suffix_D]`` with the image features
  written over the head's image placeholders by concatenation: the head is a constant, so its image
  positions are ``image_at ... image_at + N - 1`` for every item (HF writes them with
  ``masked_scatter`` on a mask computed from the ids, a data-dependent op);
* the package's 4-D multi-suffix mask and closed-form positions, exactly as ``NativeRewardModel`` builds
  them (:func:`~zreward_deploy.modeling.multi_suffix_mask`, :func:`~zreward_deploy.native.mrope_positions`);
* the HF decoder: the language model's own forward for Qwen2-VL, Qwen2.5-VL and SmolVLM; for Qwen3-VL its
  own decoder layers, rotary embedding and norm in the same order as its forward, with the deepstack
  features added onto the image positions by concatenation (HF writes them with a boolean-mask index
  assignment, which the TorchScript exporter cannot keep dynamic);
* the restricted score head on the K score-token rows of ``lm_head`` (``NativeRewardModel._read``).

Folder: a native export holds the HF ``config.json``, the tokenizer, ``zreward_processor.json``,
``zreward_native.json`` (the scoring settings, its rubric the exported dimensions in graph order) and
``preprocessor_config.json`` (image normalisation). :func:`load_export_processor` rebuilds the right
processor from any export folder.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zreward_deploy.config import SMOLVLM_FAMILIES
from zreward_deploy.errors import ZRewardInputError
from zreward_deploy.modeling import multi_suffix_mask
from zreward_deploy.native import SETTINGS_FILE, NativeRewardModel, is_native_dir, mrope_positions
from zreward_deploy.processing import ZRewardProcessor

from .native_towers import static_vision_tower

PREPROCESSOR_FILE = "preprocessor_config.json"


class NativeOnnxModel(nn.Module):
    """The exported graph of a native model: ``(input_ids, attention_mask, pixel_values) -> probs, mean,
    std, reward`` (module docstring). Suffixes and normalised reward weights are buffers.

    Args:
        reward: the native reward model (any dtype); its HF modules are used, not copied.
        suffix_ids: D one-dimensional id tensors (``processor.suffix_ids(dimensions)``).
        reward_weights: ``[D]`` weights of the scalar reward (normalised to sum 1 here).
    """

    def __init__(
        self, reward: NativeRewardModel, suffix_ids: Sequence[torch.Tensor], reward_weights: torch.Tensor
    ):
        super().__init__()
        if len(suffix_ids) != reward_weights.numel() or not suffix_ids:
            raise ZRewardInputError("dimensions", "need one suffix and one weight per dimension (D >= 1)")
        self.reward = reward
        self.family = reward.family
        self.tower = static_vision_tower(reward)
        # what the exporters read: the vocabulary (trace ids) and the image side (trace pixels)
        config = copy.copy(reward.config)
        config.image_size = int(reward.image_size[0])
        config.vision_config = copy.copy(config.vision_config)
        config.vision_config.image_size = int(reward.image_size[0])
        self.config = config
        self.lengths = [int(s.numel()) for s in suffix_ids]
        self.register_buffer(
            "suffix_ids", torch.cat([s.detach().long() for s in suffix_ids]), persistent=False
        )
        weights = reward_weights.detach().float()
        self.register_buffer("reward_weights", weights / weights.sum(), persistent=False)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``input_ids``/``attention_mask [B, S]`` int64, ``pixel_values [B, 3, H, W]`` ->
        ``probs [B, D, K]``, ``mean [B, D]``, ``std [B, D]``, ``reward [B]`` (all fp32)."""
        reward = self.reward
        batch = input_ids.shape[0]
        head = reward.head_ids
        embed = reward.get_input_embeddings()
        dtype = embed.weight.dtype
        features, deepstack = self.tower(pixel_values.to(dtype))
        ids = torch.cat([head.expand(batch, -1), input_ids, self.suffix_ids.expand(batch, -1)], dim=1)
        embeds = embed(ids)
        a, n = reward.image_at, reward.num_image_tokens
        embeds = torch.cat([embeds[:, :a], features.to(dtype), embeds[:, a + n :]], dim=1)
        mask, positions = multi_suffix_mask(attention_mask, head.numel(), self.lengths, dtype)
        if self.family not in SMOLVLM_FAMILIES:
            positions = mrope_positions(head.numel(), a, reward.grid, attention_mask, self.lengths)
        hidden = self._decoder(embeds, mask, positions, deepstack)
        ends = torch.tensor(self.lengths, device=ids.device).cumsum(0) + (head.numel() - 1)
        ends = ends + input_ids.shape[1]
        out = reward._read(hidden.index_select(1, ends), False)
        return {
            "probs": out.probs.float(),
            "mean": out.mean.float(),
            "std": out.std.float(),
            "reward": out.mean.float() @ self.reward_weights,
        }

    def _decoder(
        self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, deepstack: list[torch.Tensor]
    ) -> torch.Tensor:
        inner = self.reward.model.model
        lm = inner.text_model if self.family in SMOLVLM_FAMILIES else inner.language_model
        if not deepstack:
            out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
            return out.last_hidden_state
        # Qwen3-VL: the text model's forward, with the deepstack write as an add on the image positions
        hidden = embeds
        rotary = lm.rotary_emb(hidden, positions)
        a, n = self.reward.image_at, self.reward.num_image_tokens
        for i, layer in enumerate(lm.layers):
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary)
            if isinstance(hidden, tuple):  # decoder layers that return (hidden, ...)
                hidden = hidden[0]
            if i < len(deepstack):
                image = hidden[:, a : a + n] + deepstack[i].to(hidden.dtype)
                hidden = torch.cat([hidden[:, :a], image, hidden[:, a + n :]], dim=1)
        return lm.norm(hidden)


# --------------------------------------------------------------------------------------------------
# The export folder of a native model
# --------------------------------------------------------------------------------------------------


def load_export_processor(directory: str | os.PathLike) -> ZRewardProcessor:
    """The processor of an export folder: a native one (HF ``config.json`` of a native family) or the
    package model's (``ZRewardProcessor.from_pretrained``)."""
    if is_native_dir(directory):
        from zreward_deploy.native import load_native_processor

        return load_native_processor(directory)
    return ZRewardProcessor.from_pretrained(directory)


def write_native_files(
    tmp: Path, reward: NativeRewardModel, processor: ZRewardProcessor, dimensions: list[Any]
) -> Any:
    """Write a native export's config and processor files into ``tmp``: the HF ``config.json``, the
    tokenizer, ``zreward_processor.json``, and ``zreward_native.json`` / ``preprocessor_config.json`` with
    the rubric narrowed to the exported ``dimensions`` (in graph order). Returns that scoring config."""
    from dataclasses import asdict

    from zreward_deploy.fileio import atomic_write_text

    reward.config.save_pretrained(tmp)
    config = copy.deepcopy(processor.config)
    config.rubric = [asdict(d) for d in dimensions]
    folder_processor = ZRewardProcessor(
        processor.tokenizer, config, max_image_pixels=processor.max_image_pixels
    )
    folder_processor.save_pretrained(tmp)
    # written here too: the settings are what a reader rebuilds the processor from
    pre = {"image_mean": config.image_mean, "image_std": config.image_std}
    atomic_write_text(tmp / PREPROCESSOR_FILE, json.dumps(pre, indent=2) + "\n")
    atomic_write_text(tmp / SETTINGS_FILE, json.dumps(config.settings(), indent=2) + "\n")
    return config
