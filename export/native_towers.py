"""Fixed-resolution vision towers of the native VLM families, for ONNX export.

The Hugging Face towers do not export with a dynamic batch: Qwen-VL's take a packed ``[sum of patches,
C]`` tensor with ``grid_thw`` and split attention per image through ``cu_seqlens.tolist()`` (TorchScript
freezes the image count; dynamo stops on the data-dependent guards), and SmolVLM's computes its position
ids in a Python loop over the batch. At one fixed resolution everything those paths compute from
``grid_thw`` is a constant, so each class here

* reuses the HF tower's own sub-modules and weights (patch embedding, every block's norms, ``qkv``/``proj``
  and MLP, the merger, Qwen3-VL's deepstack mergers, SmolVLM's encoder, post-norm and connector);
* holds what HF derives from the grid as buffers computed once for it: the vision rotary ``cos``/``sin``
  tables (closed form, in HF's patch order), Qwen2.5-VL's window permutation and window lengths,
  Qwen3-VL's bilinear position-embedding indices and weights, SmolVLM's position ids;
* runs attention per image on ``[B, tokens, ...]`` (a reshape, not ``cu_seqlens``), so the batch is dynamic.

The only maths written here is what the packed layout hid: the rotary application and the attention call
(scaled dot-product attention with the HF module's own scale). ``tests/export/test_native_export.py``
checks every tower against the HF tower's forward on both transformers lines, so a transformers upgrade
that changes a tower fails a test instead of an export.

All towers map ``pixel_values [B, 3, H, W]`` (normalised, at the export resolution) to
``(features [B, N, D_lm], deepstack)``: ``N`` image tokens of the language model in HF's order and a list
of Qwen3-VL's deepstack features (each ``[B, N, D_lm]``; empty for the other families).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zreward_deploy.config import SMOLVLM_FAMILIES
from zreward_deploy.errors import InvalidModelError
from zreward_deploy.native import patchify

QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def merge_window_coordinates(grid_h: int, grid_w: int, merge: int) -> torch.Tensor:
    """``[gh * gw, 2]`` (row, col) of every patch in the Qwen-VL patch order: ``merge x merge`` windows in
    raster order, the patches inside a window in raster order (the layout of :func:`patchify`)."""
    rows = torch.arange(grid_h).view(grid_h // merge, 1, merge, 1).expand(-1, grid_w // merge, -1, merge)
    cols = torch.arange(grid_w).view(1, grid_w // merge, 1, merge).expand(grid_h // merge, -1, merge, -1)
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)


def qwen_window_layout(merged_h: int, merged_w: int, window: int) -> tuple[torch.Tensor, list[int]]:
    """Qwen2.5-VL's window attention at a fixed grid of ``merged_h x merged_w`` merged tokens.

    Windows of ``window x window`` merged tokens tile the grid from the top left (the last row and column
    of windows may be partial); HF orders the merged tokens window by window, each window in raster order.
    Returns the permutation (``perm[i]`` = the raster index of the i-th merged token in window order) and
    the number of merged tokens of each window, in order.
    """
    perm: list[int] = []
    lengths: list[int] = []
    for r0 in range(0, merged_h, window):
        for c0 in range(0, merged_w, window):
            rows = range(r0, min(r0 + window, merged_h))
            cols = range(c0, min(c0 + window, merged_w))
            perm += [r * merged_w + c for r in rows for c in cols]
            lengths.append(len(rows) * len(cols))
    return torch.tensor(perm, dtype=torch.long), lengths


class StaticQwenVisionTower(nn.Module):
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL vision tower at one resolution, with a dynamic batch.

    Args:
        tower: the HF tower (``model.model.visual``); its sub-modules are used, not copied.
        family: ``qwen2_vl``, ``qwen2_5_vl`` or ``qwen3_vl``.
        image_size: ``(H, W)``, multiples of patch size x merge size.
    """

    def __init__(self, tower: nn.Module, family: str, image_size: tuple[int, int]):
        super().__init__()
        if family not in QWEN_FAMILIES:
            raise InvalidModelError(
                "family", f"{family!r} has no static Qwen-VL tower; one of {QWEN_FAMILIES}"
            )
        config = tower.config
        self.tower = tower
        self.family = family
        self.patch_size = int(config.patch_size)
        self.temporal_patch_size = int(config.temporal_patch_size)
        self.merge = int(config.spatial_merge_size)
        h, w = image_size
        unit = self.patch_size * self.merge
        if h % unit or w % unit:
            raise InvalidModelError("image_size", f"{h}x{w} is not a multiple of {unit} (patch x merge)")
        self.image_size = (h, w)
        gh, gw = h // self.patch_size, w // self.patch_size
        self.num_patches = gh * gw
        self.num_tokens = self.num_patches // self.merge**2
        block = tower.blocks[0].attn
        self.num_heads = int(block.num_heads)
        self.head_dim = int(block.head_dim)
        self.scaling = float(block.scaling)

        # Rotary tables: each patch rotates by (row, col) x inv_freq on the two halves of its head dim,
        # HF's (rows, cols) -> cat(rows * f, cols * f), then repeated twice.
        coords = merge_window_coordinates(gh, gw, self.merge).float()  # [N, 2]
        inv_freq = self._inv_freq()
        freqs = (coords[:, :, None] * inv_freq[None, None, :]).flatten(1)  # [N, head_dim / 2]
        emb = torch.cat([freqs, freqs], dim=-1)

        # Qwen2.5-VL: windows over merged tokens; full attention in `fullatt_block_indexes`.
        self.window_lengths: list[int] = []
        self.full_attention_blocks: set[int] = set(range(len(tower.blocks)))
        if family == "qwen2_5_vl":
            window = int(config.window_size) // self.merge // self.patch_size
            perm, self.window_lengths = qwen_window_layout(gh // self.merge, gw // self.merge, window)
            self.full_attention_blocks = {int(i) for i in config.fullatt_block_indexes}
            self.register_buffer("window_perm", perm, persistent=False)
            self.register_buffer("window_unperm", torch.argsort(perm), persistent=False)
            unit_tokens = self.merge**2
            emb = emb.view(self.num_tokens, unit_tokens, -1)[perm].reshape(self.num_patches, -1)
            if len(set(self.window_lengths)) > 1:  # partial windows: one block-diagonal mask
                ids = torch.repeat_interleave(
                    torch.arange(len(self.window_lengths)), torch.tensor(self.window_lengths) * unit_tokens
                )
                blocked = ids[:, None] != ids[None, :]
                mask = torch.zeros(blocked.shape).masked_fill(blocked, torch.finfo(torch.float32).min)
                self.register_buffer("window_mask", mask, persistent=False)
        self.register_buffer("rotary_cos", emb.cos(), persistent=False)
        self.register_buffer("rotary_sin", emb.sin(), persistent=False)

        # Qwen3-VL: learned absolute positions, bilinearly interpolated to the grid (HF's weights).
        self.deepstack_indexes: list[int] = []
        if family == "qwen3_vl":
            index, weight = qwen3_position_interpolation(int(tower.num_grid_per_side), gh, gw, self.merge)
            self.register_buffer("pos_index", index, persistent=False)
            self.register_buffer("pos_weight", weight, persistent=False)
            self.deepstack_indexes = [int(i) for i in config.deepstack_visual_indexes]

    def _inv_freq(self) -> torch.Tensor:
        """The tower's rotary inverse frequencies (its buffer; the same formula on both lines)."""
        inv_freq = getattr(self.tower.rotary_pos_emb, "inv_freq", None)
        if inv_freq is None or inv_freq.numel() * 4 != self.head_dim:
            raise InvalidModelError(
                "rotary_pos_emb",
                "the vision tower's rotary embedding has no inv_freq of head_dim / 4 entries; this "
                "transformers version changed it and the static tower must be updated",
            )
        return inv_freq.detach().float().cpu()

    # -- the tower ---------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``[B, 3, H, W]`` -> ``(features [B, N, D], deepstack [B, N, D] x len(deepstack_indexes))``."""
        tower = self.tower
        patches = patchify(pixel_values, self.patch_size, self.temporal_patch_size, self.merge)
        x = tower.patch_embed(patches)  # [B * P, C]
        c = x.shape[-1]
        x = x.view(-1, self.num_patches, c)
        if self.family == "qwen3_vl":
            pos = tower.pos_embed(self.pos_index) * self.pos_weight[:, :, None]  # [4, P, C]
            x = x + (pos[0] + pos[1] + pos[2] + pos[3]).to(x.dtype)
        if self.family == "qwen2_5_vl":
            x = self._permute_units(x, self.window_perm)
        deepstack = []
        for i, block in enumerate(tower.blocks):
            windowed = i not in self.full_attention_blocks
            x = x + self._attention(block.attn, block.norm1(x), windowed)
            x = x + block.mlp(block.norm2(x))
            if i in self.deepstack_indexes:
                merger = tower.deepstack_merger_list[self.deepstack_indexes.index(i)]
                deepstack.append(
                    merger(x.reshape(-1, c)).view(-1, self.num_tokens, merger.linear_fc2.out_features)
                )
        merged = tower.merger(x.reshape(-1, c))
        merged = merged.view(-1, self.num_tokens, merged.shape[-1])
        if self.family == "qwen2_5_vl":
            merged = merged[:, self.window_unperm]
        return merged, deepstack

    def _permute_units(self, x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        """Reorder ``[B, P, C]`` by merged token (the ``merge x merge`` patches of one stay together)."""
        unit = self.merge**2
        return x.view(-1, self.num_tokens, unit, x.shape[-1])[:, perm].reshape(x.shape)

    def _attention(self, attn: nn.Module, x: torch.Tensor, windowed: bool) -> torch.Tensor:
        """HF's vision attention (``qkv``, rotary in fp32, softmax(q k^T * scale) v, ``proj``) on
        ``[B, P, C]``: each image attends within itself, or within its windows when ``windowed``."""
        b, p, c = x.shape
        qkv = attn.qkv(x).view(b, p, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, P, hd]
        cos, sin = self.rotary_cos, self.rotary_sin
        q = (q.float() * cos + _rotate_half(q.float()) * sin).to(v.dtype)
        k = (k.float() * cos + _rotate_half(k.float()) * sin).to(v.dtype)
        mask = None
        if windowed and hasattr(self, "window_mask"):
            mask = self.window_mask.to(q.dtype)
        elif windowed:  # equal windows: attention per window is attention on [B, heads * windows, L]
            n = len(self.window_lengths)
            q, k, v = (t.reshape(b, self.num_heads * n, p // n, self.head_dim) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
        out = out.reshape(b, self.num_heads, p, self.head_dim).transpose(1, 2).reshape(b, p, c)
        return attn.proj(out)


def qwen3_position_interpolation(
    side: int, grid_h: int, grid_w: int, merge: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3-VL's learned ``side x side`` position table resampled to a ``grid_h x grid_w`` patch grid:
    bilinear with aligned corners (``linspace(0, side - 1, n)``), as HF's tower does, as the 4 corner
    indices and weights ``[4, P]`` per patch, in the patch order of :func:`merge_window_coordinates`."""
    hs = torch.linspace(0, side - 1, grid_h)
    ws = torch.linspace(0, side - 1, grid_w)
    h0, w0 = hs.int(), ws.int()
    h1, w1 = (h0 + 1).clip(max=side - 1), (w0 + 1).clip(max=side - 1)
    dh, dw = hs - h0, ws - w0
    index = torch.stack([
        (h0[:, None] * side + w0[None]), (h0[:, None] * side + w1[None]),
        (h1[:, None] * side + w0[None]), (h1[:, None] * side + w1[None]),
    ]).flatten(1)  # fmt: skip
    weight = torch.stack([
        (1 - dh)[:, None] * (1 - dw)[None], (1 - dh)[:, None] * dw[None],
        dh[:, None] * (1 - dw)[None], dh[:, None] * dw[None],
    ]).flatten(1)  # fmt: skip
    coords = merge_window_coordinates(grid_h, grid_w, merge)
    order = coords[:, 0] * grid_w + coords[:, 1]
    return index[:, order].long(), weight[:, order]


# --------------------------------------------------------------------------------------------------
# SmolVLM: SigLIP tower + pixel-shuffle connector
# --------------------------------------------------------------------------------------------------


def smolvlm_position_ids(embeddings: nn.Module, image_size: int, dtype: torch.dtype) -> torch.Tensor:
    """The position ids SmolVLM's own embedding layer uses for one ``image_size`` image in ``dtype``.

    They are read from HF's code, not re-derived: since transformers 4.55 the fractional coordinates are
    computed in the pixels' dtype and scaled by ``1 - 1e-6``, so fp32 ids can collide (two rows or columns
    of patches share an id; transformers issue #41190) while fp16 ones do not, and later versions change
    the formula again. So the ids come from running the installed embedding class itself, on a probe
    copy whose patch embedding is zero and whose position table holds each row's own index, with one
    image of zeros in ``dtype``: its output is exactly the ids. Returns ``[P]`` int64.
    """
    side = int(embeddings.num_patches_per_side)
    n = int(embeddings.num_positions)
    if n > 2048:  # ids must be exact in fp16 below
        dtype = torch.float32 if dtype == torch.float16 else dtype
    probe = _embedding_probe(embeddings)
    with torch.no_grad():
        probe.patch_embedding.weight.zero_()
        if probe.patch_embedding.bias is not None:
            probe.patch_embedding.bias.zero_()
        probe.position_embedding.weight.copy_(
            torch.arange(n, dtype=torch.float32)[:, None].expand(-1, probe.embed_dim)
        )
        probe = probe.to(dtype)
        pixels = torch.zeros(1, 3, image_size, image_size, dtype=dtype)
        grid = image_size // int(embeddings.patch_size)
        mask = torch.ones(1, grid, grid, dtype=torch.bool)
        out = probe(pixel_values=pixels, patch_attention_mask=mask)[0, :, 0].float()
    ids = out.round().long()
    if not torch.equal(ids.float(), out) or ids.min() < 0 or ids.max() >= n or side * side != n:
        raise InvalidModelError(
            "vision_model.embeddings", "could not read SmolVLM's position ids from its embedding layer"
        )
    return ids


def _embedding_probe(embeddings: nn.Module) -> nn.Module:
    """A copy of the embedding layer (its own class and code), in fp32 on the CPU."""
    import copy

    probe = copy.deepcopy(embeddings).cpu().float()
    probe.requires_grad_(False)
    return probe


class StaticSmolVLMVisionTower(nn.Module):
    """SmolVLM's vision tower (SigLIP embeddings, encoder, post-norm) and connector (pixel shuffle, then
    the projection) for one image per item at the tower's own size, with a dynamic batch.

    The position ids are a buffer read from HF's embedding layer for fp32 pixels
    (:func:`smolvlm_position_ids`), in every dtype of the module: the fp32 model is the deployment
    reference an export is validated against, and on transformers 4.55-4.57 HF's own fp16 forward uses
    other (collision-free) ids than its fp32 forward, so following the dtype would make the fp16 graph a
    different model (measured: 0.08 on probs for the tiny preset), not a rounding of the same one.
    """

    def __init__(self, vision_model: nn.Module, connector: nn.Module, image_size: int):
        super().__init__()
        self.vision_model = vision_model
        self.connector = connector
        embeddings = vision_model.embeddings
        side = int(vision_model.config.image_size)
        if image_size != side:
            raise InvalidModelError(
                "image_size", f"{image_size}: SmolVLM's vision tower reads {side}x{side} images"
            )
        self.image_size = (image_size, image_size)
        grid = image_size // int(embeddings.patch_size)
        scale = int(connector.scale_factor)
        self.num_tokens = grid * grid // (scale * scale)
        ids = smolvlm_position_ids(embeddings, image_size, torch.float32)
        self.register_buffer("position_ids", ids, persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``[B, 3, H, W]`` -> ``(features [B, N, D_lm], [])``."""
        embeddings = self.vision_model.embeddings
        dtype = embeddings.patch_embedding.weight.dtype
        x = embeddings.patch_embedding(pixel_values.to(dtype)).flatten(2).transpose(1, 2)
        x = x + embeddings.position_embedding(self.position_ids)[None]
        # one full image per item: no padding mask (HF's all-ones mask adds zeros)
        x = self.vision_model.encoder(inputs_embeds=x, attention_mask=None).last_hidden_state
        x = self.vision_model.post_layernorm(x)
        return self.connector(x), []


def static_vision_tower(reward: nn.Module) -> nn.Module:
    """The static tower of a :class:`~zreward_deploy.native.NativeRewardModel` at its image size."""
    inner = reward.model.model
    if reward.family in SMOLVLM_FAMILIES:
        return StaticSmolVLMVisionTower(inner.vision_model, inner.connector, int(reward.image_size[0]))
    return StaticQwenVisionTower(inner.visual, reward.family, tuple(reward.image_size))


__all__ = [
    "StaticQwenVisionTower",
    "StaticSmolVLMVisionTower",
    "qwen3_position_interpolation",
    "qwen_window_layout",
    "smolvlm_position_ids",
    "static_vision_tower",
]
