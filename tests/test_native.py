"""Native HF VLMs (zreward_deploy/native.py): one-pass scoring of Qwen2-VL, Qwen2.5-VL, Qwen3-VL and SmolVLM
equals the HF model's own forward run once per (item, dimension) with full-vocabulary logits, on both
transformers lines.

Tiny models built from configs (no download), weights redrawn from N(0, 0.1) so that the score logits are
O(1) and a wrong position or a leaking mask shows.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from zreward_deploy.errors import InvalidModelError
from zreward_deploy.modeling import multi_suffix_mask
from zreward_deploy.native import NativeRewardModel, mrope_positions, patchify

IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 120, 121, 122, 123
SCORE_IDS = [30, 31, 32, 33, 34]  # the K = 5 score tokens, "1".."5"
VALUES = [1.0, 2.0, 3.0, 4.0, 5.0]
IMAGE_SIZE = (16, 32)  # patch 4 x merge 2: 2 x 4 image tokens in the language model (Qwen-VL)
SMOL_SIZE = (32, 32)  # SmolVLM reads its tower's own size: patch 8, pixel shuffle 2 -> 2 x 2 = 4 tokens
TEXT = dict(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
    rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip
SPECIAL = dict(
    image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
    vision_end_token_id=VISION_END, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip


def build(family: str, seed: int = 0, attn: str = "sdpa"):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    common = dict(patch_size=4, spatial_merge_size=2, temporal_patch_size=2, num_heads=2, depth=2)
    if family in SMOL:
        from transformers import (
            Idefics3Config,
            Idefics3ForConditionalGeneration,
            SmolVLMConfig,
            SmolVLMForConditionalGeneration,
        )

        text = {k: v for k, v in TEXT.items() if k != "rope_scaling"}
        vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                      image_size=SMOL_SIZE[0], patch_size=8)  # fmt: skip
        config_cls, cls = (
            (SmolVLMConfig, SmolVLMForConditionalGeneration)
            if family == "smolvlm"
            else (Idefics3Config, Idefics3ForConditionalGeneration)
        )
        config = config_cls(
            text_config={"model_type": "llama", **text}, vision_config=vision, scale_factor=2,
            image_token_id=IMAGE_TOKEN, pad_token_id=0, attn_implementation=attn,
        )  # fmt: skip
    elif family == "qwen3_vl":
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        text = {k: v for k, v in TEXT.items() if k != "rope_scaling"}
        text.update(head_dim=16, rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3],
                                               "mrope_interleaved": True})  # fmt: skip
        vision = dict(hidden_size=32, intermediate_size=48, out_hidden_size=64, num_position_embeddings=16,
                      deepstack_visual_indexes=[0, 1], **common)  # fmt: skip
        config = Qwen3VLConfig(text_config=text, vision_config=vision, attn_implementation=attn, **SPECIAL)
        cls = Qwen3VLForConditionalGeneration
    elif family == "qwen2_vl":
        config = Qwen2VLConfig(
            text_config=TEXT, vision_config=dict(embed_dim=32, hidden_size=64, **common),
            attn_implementation=attn, **SPECIAL,
        )  # fmt: skip
        cls = Qwen2VLForConditionalGeneration
    else:
        vision = dict(hidden_size=32, intermediate_size=48, out_hidden_size=64, window_size=16,
                      fullatt_block_indexes=[1], **common)  # fmt: skip
        config = Qwen2_5_VLConfig(text_config=TEXT, vision_config=vision, attn_implementation=attn, **SPECIAL)
        cls = Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.1)
    return model


def head_ids(n_image: int) -> list[int]:
    # "<|im_start|>user\n" ~ [3, 4, 5], the image between its start and end tokens, then "\n" ~ [6]
    return [3, 4, 5, VISION_START, *[IMAGE_TOKEN] * n_image, VISION_END, 6]


FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm", "idefics3")
SMOL = ("smolvlm", "idefics3")  # SmolVLM2, and SmolVLM v1 / Idefics3 (the same architecture)


def size_of(family: str) -> tuple[int, int]:
    return SMOL_SIZE if family in SMOL else IMAGE_SIZE


@pytest.fixture(scope="module", params=FAMILIES)
def native(request):
    model = build(request.param)
    n = 4 if request.param in SMOL else 8
    reward = NativeRewardModel(model, head_ids(n), SCORE_IDS, VALUES, size_of(request.param), temperature=0.7)
    return request.param, model, reward.eval()


def _batch(seed: int = 0, size: tuple[int, int] = IMAGE_SIZE):
    gen = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(3, 3, *size, generator=gen)
    lengths = [7, 3, 5]
    ids = torch.randint(7, 100, (3, 7), generator=gen)
    mask = (torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask  # padding id 0 where masked
    suffixes = [torch.tensor([40, 41, 42]), torch.tensor([43, 44]), torch.tensor([45, 46, 47, 48])]
    return pixel_values, ids, mask, lengths, suffixes


def _hf_reference(reward, pixel_values, ids, lengths, suffixes, temperature):
    """What a transformers user writes today: the model's own forward (its own positions, e.g. from
    get_rope_index, and its own causal mask) on each [head][prompt][suffix_d], full-vocabulary logits at
    the last token, then the K score tokens' logits -> softmax. ``[B, D, K]``."""
    rows = []
    head = reward.head_ids.tolist()
    for b in range(ids.shape[0]):
        row = []
        for suffix in suffixes:
            seq = torch.tensor([*head, *ids[b, : lengths[b]].tolist(), *suffix.tolist()])[None]
            extra = {**reward.hf_image_inputs(pixel_values[b : b + 1]), **reward.mm_token_types(seq)}
            with torch.no_grad():
                logits = reward.model(input_ids=seq, attention_mask=torch.ones_like(seq), **extra).logits[
                    0, -1
                ]
            row.append(torch.softmax(logits[SCORE_IDS] / temperature, -1))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def test_one_pass_equals_the_hf_forward_per_dimension(native):
    family, _, reward = native
    pixel_values, ids, mask, lengths, suffixes = _batch(size=size_of(family))
    with torch.no_grad():
        out = reward(pixel_values, ids, mask, suffixes)
    want = _hf_reference(reward, pixel_values, ids, lengths, suffixes, 0.7)
    assert out.probs.shape == (3, 3, 5)
    torch.testing.assert_close(out.probs, want, rtol=0, atol=2e-6)
    expected_mean = (want * torch.tensor(VALUES)).sum(-1)
    torch.testing.assert_close(out.mean, expected_mean, rtol=0, atol=1e-5)
    # the comparison can fail: the distributions are far from uniform, and differ between dimensions
    assert (out.probs.max(-1).values > 0.3).any()
    assert (out.probs[:, 0] - out.probs[:, 1]).abs().max() > 1e-2


def test_positions_and_mask_matter(native, monkeypatch):
    """Negative controls: suffixes that do not restart their positions, or that see the suffixes before
    them, give other distributions (so the equality above tests the positions and the mask)."""
    import zreward_deploy.native as native_module

    family, _, reward = native
    pixel_values, ids, mask, _, suffixes = _batch(size=size_of(family))
    with torch.no_grad():
        good = reward(pixel_values, ids, mask, suffixes).probs
    n_suffix = sum(int(s.numel()) for s in suffixes)

    def no_restart(pos):  # the suffixes continue counting instead of restarting
        tail = pos.shape[-1] - n_suffix
        return torch.cat([pos[..., :tail], pos[..., tail:] + torch.arange(n_suffix)], dim=-1)

    if family in SMOL:  # 1-D positions come with the mask
        monkeypatch.setattr(
            native_module, "multi_suffix_mask",
            lambda *a: (lambda m, p: (m, no_restart(p)))(*multi_suffix_mask(*a)),
        )  # fmt: skip
    else:
        monkeypatch.setattr(native_module, "mrope_positions", lambda *a: no_restart(mrope_positions(*a)))
    with torch.no_grad():
        shifted = reward(pixel_values, ids, mask, suffixes).probs
    assert (shifted - good).abs().max() > 1e-3
    monkeypatch.undo()

    monkeypatch.setattr(native_module, "multi_suffix_mask", _with_suffixes_visible)
    with torch.no_grad():
        leaky = reward(pixel_values, ids, mask, suffixes).probs
    torch.testing.assert_close(leaky[:, 0], good[:, 0], rtol=0, atol=2e-6)  # the first suffix sees no other
    assert (leaky[:, 1:] - good[:, 1:]).abs().max() > 1e-3


def _with_suffixes_visible(attention_mask, prefix, lengths, dtype):
    """The one-pass mask, except that each suffix also sees the suffixes before it (plain causal there)."""
    mask4d, position_ids = multi_suffix_mask(attention_mask, prefix, lengths, dtype)
    start = prefix + attention_mask.shape[1]
    causal = torch.ones(mask4d.shape[-1] - start, mask4d.shape[-1] - start, dtype=torch.bool).tril()
    block = mask4d[..., start:, start:]
    mask4d[..., start:, start:] = torch.where(causal, torch.zeros_like(block), block)
    return mask4d, position_ids


def test_patchify_is_the_hf_image_processors_layout():
    """Without a resize, the torch patchify equals Qwen2VLImageProcessor exactly (layout and grid)."""
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor(patch_size=4, merge_size=2, temporal_patch_size=2, do_resize=False)
    image = np.random.default_rng(0).integers(0, 256, (*IMAGE_SIZE, 3), dtype=np.uint8)
    hf = processor(images=[image], return_tensors="pt")
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    ours = patchify(((x - mean) / std)[None], 4, 2, 2)
    assert hf["image_grid_thw"].tolist() == [[1, IMAGE_SIZE[0] // 4, IMAGE_SIZE[1] // 4]]
    torch.testing.assert_close(ours, hf["pixel_values"].float(), rtol=0, atol=1e-5)


def test_gradients_reach_every_pixel_and_the_score_rows(native):
    family, model, reward = native
    pixel_values, ids, mask, _, suffixes = _batch(1, size_of(family))
    pixel_values.requires_grad_(True)
    model.zero_grad()
    out = reward(pixel_values, ids, mask, suffixes)
    (out.mean.sum()).backward()
    assert torch.isfinite(pixel_values.grad).all() and (pixel_values.grad != 0).float().mean() > 0.99
    lm_grad = model.get_output_embeddings().weight.grad
    touched = (lm_grad.abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert touched == SCORE_IDS  # only the K score rows of lm_head are read
    model.zero_grad()


def test_refusals():
    model = build("qwen2_vl")
    with pytest.raises(InvalidModelError, match="image tokens"):
        NativeRewardModel(model, head_ids(7), SCORE_IDS, VALUES, IMAGE_SIZE)
    with pytest.raises(InvalidModelError, match="multiple of 8"):
        NativeRewardModel(model, head_ids(8), SCORE_IDS, VALUES, (16, 30))
    reward = NativeRewardModel(model, head_ids(8), SCORE_IDS, VALUES, IMAGE_SIZE)
    pixel_values, ids, mask, _, suffixes = _batch()
    with pytest.raises(InvalidModelError, match="the model reads"):
        reward(pixel_values[..., :16], ids, mask, suffixes)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(InvalidModelError, match="4-D mask"):
        NativeRewardModel(model, head_ids(8), SCORE_IDS, VALUES, IMAGE_SIZE)


# --------------------------------------------------------------------------------------------------
# A native checkpoint folder: saved, loaded through Scorer.from_pretrained / zreward score
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=FAMILIES)
def native_dir(request, tmp_path_factory):
    from zreward_deploy.native import build_native_preset, save_native

    model, processor = build_native_preset(request.param, seed=3)
    with torch.no_grad():  # scores far from uniform, so that a wrong token or image shows
        for p in model.model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.1)
    out = tmp_path_factory.mktemp(f"native_{request.param}")
    save_native(model, processor, out)
    return request.param, out, model, processor


def _images():
    gen = torch.Generator().manual_seed(5)
    return [torch.rand(3, 40, 52, generator=gen), torch.rand(3, 32, 32, generator=gen)]


PROMPTS = ["a red cube", "two blue spheres on a wooden table"]


def test_a_native_folder_scores_through_the_scorer_like_the_hf_forward(native_dir):
    """Scorer.from_pretrained(folder) on the saved checkpoint: per item and dimension, the probabilities
    equal the HF model's own forward on [head][prompt template][dimension suffix] (the checkpoint's
    tokenizer, the score tokens' logits of the full vocabulary)."""
    from zreward_deploy.scoring import Scorer

    family, folder, _, processor = native_dir
    scorer = Scorer.from_pretrained(folder)
    assert scorer.model.config.model_type == family
    images = _images()
    result = scorer.score(images, PROMPTS)
    assert result.errors == {} and result.probs.shape == (2, 4, 5)
    hf = scorer.model.model
    for b, (image, prompt) in enumerate(zip(images, PROMPTS, strict=True)):
        image_inputs = scorer.model.hf_image_inputs(processor.pixel_values([processor.model_image(image)]))
        for d, suffix in enumerate(processor.suffix_ids(result.dimensions)):
            seq = torch.tensor(
                [*scorer.model.head_ids.tolist(), *processor.prompt_ids(prompt), *suffix.tolist()]
            )
            extra = {**image_inputs, **scorer.model.mm_token_types(seq[None])}
            with torch.no_grad():
                logits = hf(input_ids=seq[None], attention_mask=torch.ones_like(seq)[None], **extra).logits[
                    0, -1
                ]
            want = torch.softmax(logits[processor.score_token_ids], -1)
            torch.testing.assert_close(result.probs[b, d], want, rtol=0, atol=2e-6)
    assert (result.probs.max(-1).values > 0.3).any()  # not near-uniform: the check can fail


def test_the_saved_folder_scores_like_the_model_it_was_saved_from(native_dir):
    from zreward_deploy.scoring import Scorer

    _, folder, model, processor = native_dir
    loaded = Scorer.from_pretrained(folder).score(_images(), PROMPTS)
    built = Scorer(model, processor).score(_images(), PROMPTS)
    torch.testing.assert_close(loaded.probs, built.probs, rtol=0, atol=1e-6)
    assert loaded.dimensions == built.dimensions == ["alignment", "realism", "aesthetics", "plausibility"]


def test_zreward_score_on_a_native_folder(native_dir, tmp_path, capsys):
    import json

    from PIL import Image

    from zreward_deploy.cli import main

    _, folder, _, _ = native_dir
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(image)
    code = main(["score", "--model", str(folder), "--image", str(image), "--prompt", "a red cube", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    text = json.dumps(out)
    assert "realism" in text and "alignment" in text


def _with_settings(folder, out, **changes):
    """A copy of a native folder whose zreward_native.json has ``changes`` applied."""
    import json
    import shutil

    shutil.copytree(folder, out)
    settings = json.loads((out / "zreward_native.json").read_text())
    (out / "zreward_native.json").write_text(json.dumps({**settings, **changes}))
    return out


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"score_scale": {"values": [1, 2, 3], "tokens": ["poor", "average", "excellent"]}}, "single token"),
        ({"resolution": 448}, "unknown settings"),
        ({"image_size": 36}, "multiple of 8"),
        ({"head": "<|im_start|>user\n"}, "with exactly one <"),
        ({"resample": "lanczos"}, "resample: must be one of ('bilinear', 'bicubic')"),
    ],
)
def test_native_settings_that_would_fail_later_are_refused(native_dir, tmp_path, changes, error):
    from zreward_deploy.native import load_native

    family, folder, _, _ = native_dir
    if family in SMOL and error == "multiple of 8":  # 36 px = 9 patches of 4, shuffled by 2
        error = "not a multiple of the pixel shuffle's 2"
    with pytest.raises(InvalidModelError, match=re.escape(error)):
        load_native(_with_settings(folder, tmp_path / "copy", **changes))


def test_pickle_only_native_folders_are_refused(native_dir, tmp_path):
    import shutil

    from zreward_deploy.native import load_native

    _, folder, _, _ = native_dir
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(InvalidModelError, match="pickle"):
        load_native(tmp_path)


def test_score_tensor_on_a_native_folder_is_differentiable_to_the_pixels(native_dir):
    """ReFL / DRaFT: [B, 3, H, W] in [0, 1] -> reward, with the resize, normalisation and patch layout in
    torch; the gradient reaches every input pixel, and the reward equals score() on the same images."""
    from zreward_deploy.scoring import Scorer

    _, folder, _, _ = native_dir
    scorer = Scorer.from_pretrained(folder)
    images = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(9), requires_grad=True)
    result = scorer.score_tensor(images, PROMPTS)
    result.reward.sum().backward()
    assert torch.isfinite(images.grad).all() and (images.grad != 0).float().mean() > 0.99
    plain = scorer.score(list(images.detach()), PROMPTS)
    torch.testing.assert_close(result.reward.detach(), plain.reward, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Teacher generation: the model's own generate, then the score after the reasoning
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=FAMILIES)
def native_teacher(request):
    from zreward_deploy.native import build_native_preset

    model, processor = build_native_preset(request.param, seed=1)
    with torch.no_grad():
        for p in model.model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.1)
    return request.param, model.eval(), processor


def _assert_teacher_forcing_agrees(model, processor, pixel_values, out):
    """The log-probs generation recorded equal the teacher-forced pass over the same traces."""
    from zreward_deploy.generation import teacher_forward

    with torch.no_grad():
        token_logprobs, _ = teacher_forward(
            model,
            processor,
            pixel_values,
            out.prompt_ids,
            out.reasoning_ids,
            out.reasoning_mask,
            out.finished,
        )
    torch.testing.assert_close(token_logprobs, out.logprobs, rtol=0, atol=1e-5)


def test_teacher_generation_agrees_with_teacher_forcing_and_the_hf_forward(native_teacher):
    """generate_reasoning samples with the HF model's own generate (left padding, its own positions and
    cache); the log-probs it records equal the teacher-forced pass (right padding, closed-form positions,
    4-D mask), and the score read after each trace equals the HF forward on that whole sequence."""
    from zreward_deploy.generation import generate_reasoning, teacher_sequences

    _, model, processor = native_teacher
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    prompts = ["a red cube", "two blue spheres on the table"]
    out = generate_reasoning(
        model, processor, images, prompts, "realism", num_samples=2, max_new_tokens=5, seed=0
    )
    assert out.reasoning_ids.shape[0] == 4 and out.reasoning_mask.sum() > 0
    pixel_values = processor.preprocess_tensor(images).repeat_interleave(2, 0)
    _assert_teacher_forcing_agrees(model, processor, pixel_values, out)
    # the same seed, the same traces
    again = generate_reasoning(
        model, processor, images, prompts, "realism", num_samples=2, max_new_tokens=5, seed=0
    )
    assert torch.equal(again.reasoning_ids, out.reasoning_ids)

    lengths = out.reasoning_mask.sum(1).tolist()
    reasoning = [out.reasoning_ids[i, :n].tolist() for i, n in enumerate(lengths)]
    ids, mask, _ = teacher_sequences(processor, out.prompt_ids, reasoning, out.finished.tolist())
    head = model.head_ids.tolist()
    for i in range(4):
        seq = torch.tensor([*head, *ids[i, : int(mask[i].sum())].tolist()])[None]
        extra = {**model.hf_image_inputs(pixel_values[i : i + 1]), **model.mm_token_types(seq)}
        with torch.no_grad():
            logits = model.model(input_ids=seq, attention_mask=torch.ones_like(seq), **extra).logits[0, -1]
        want = torch.softmax(logits[processor.score_token_ids] / model.temperature, -1)
        torch.testing.assert_close(out.scores.probs[i, 0], want, rtol=0, atol=2e-6)


def test_image_placeholders_are_never_sampled(native_teacher):
    """A trace that sampled an image placeholder would make the HF forward expect one more image feature
    than the image has (a random teacher did, in RISD's cache). With the placeholders' logits raised by 30
    (a hook on lm_head: unsuppressed, nearly every token would be one), generation never samples them, and
    the recorded log-probs still equal teacher forcing (both renormalise over the sampleable tokens)."""
    from zreward_deploy.generation import generate_reasoning

    _, model, processor = native_teacher
    banned = torch.tensor(model.unsampleable_token_ids)
    assert model.config.image_token_id in banned.tolist()

    def favour_placeholders(module, inputs, logits):
        return logits.index_add(-1, banned, torch.full((len(banned),), 30.0).expand(*logits.shape[:-1], -1))

    hook = model.get_output_embeddings().register_forward_hook(favour_placeholders)
    try:
        images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        out = generate_reasoning(
            model,
            processor,
            images,
            ["a red cube", "a dog"],
            "realism",
            num_samples=2,
            max_new_tokens=6,
            seed=0,
        )
        assert out.reasoning_mask.sum() > 0
        assert not torch.isin(out.reasoning_ids, banned).any()
        pixel_values = processor.preprocess_tensor(images).repeat_interleave(2, 0)
        _assert_teacher_forcing_agrees(model, processor, pixel_values, out)
    finally:
        hook.remove()


def test_folders_written_under_transformers_5_load_under_4_57(native_dir, tmp_path):
    """transformers 5 writes RoPE as one ``rope_parameters`` dict, which 4.57's Qwen-VL configs cannot read;
    save_native adds the 4.57 fields beside it. Here the folder's config is put into 5's form (on either line),
    made portable again, and must load and score exactly as before on this line."""
    import json
    import shutil

    from zreward_deploy.native import load_native, portable_native_config

    family, folder, _, _ = native_dir
    if family in SMOL:
        pytest.skip("SmolVLM's Llama has no M-RoPE sections: its RoPE fields are plain on both lines")
    five = tmp_path / "five"
    shutil.copytree(folder, five)
    config = json.loads((five / "config.json").read_text())
    for part in (config, config.get("text_config") or {}):
        if "rope_scaling" in part or "rope_theta" in part:
            scaling = part.pop("rope_scaling", None) or {}
            part["rope_parameters"] = {**scaling, "rope_theta": part.pop("rope_theta", 1e6)}
    (five / "config.json").write_text(json.dumps(config))
    portable_native_config(five / "config.json")
    text = json.loads((five / "config.json").read_text())["text_config"]
    assert (
        text["rope_scaling"]["mrope_section"] and text["rope_theta"] == text["rope_parameters"]["rope_theta"]
    )
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    scores = []
    for path in (folder, five):
        model, processor = load_native(path)
        with torch.no_grad():
            scores.append(
                model(
                    processor.preprocess_tensor(images),
                    *_prompt_inputs(processor),
                    processor.suffix_ids(["realism"]),
                ).probs
            )
    torch.testing.assert_close(scores[0], scores[1], rtol=0, atol=0)


def _prompt_inputs(processor):
    ids = torch.tensor([processor.prompt_ids("a red cube")] * 2)
    return ids, torch.ones_like(ids)


def test_the_reasoning_scorer_reads_a_native_teacher(native_teacher):
    from zreward_deploy.scoring import ReasoningScorer

    _, model, processor = native_teacher
    scorer = ReasoningScorer(model, processor, num_samples=2, max_new_tokens=4, seed=0)
    result = scorer.score(
        [torch.rand(3, 40, 36), torch.rand(3, 32, 32)], "a red cube", dimensions=["realism"]
    )
    assert result.errors == {} and result.probs.shape == (2, 1, 5)
    torch.testing.assert_close(result.probs.sum(-1), torch.ones(2, 1))
    assert scorer.tokens_generated > 0 and scorer.images_scored == 2


def test_the_checkpoints_generation_config_does_not_change_sampling(native_dir, tmp_path):
    """A published checkpoint's generation_config.json (repetition penalty, top-k) would sample from
    another distribution than the recorded log-probs; generation ignores it."""
    import json
    import shutil

    from zreward_deploy.generation import generate_reasoning
    from zreward_deploy.native import load_native

    _, folder, _, _ = native_dir
    shutil.copytree(folder, tmp_path / "with_config")
    (tmp_path / "with_config" / "generation_config.json").write_text(
        json.dumps({"repetition_penalty": 50.0, "top_k": 1, "do_sample": False, "max_new_tokens": 1})
    )
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    runs = []
    for path in (folder, tmp_path / "with_config"):
        model, processor = load_native(path)
        runs.append(generate_reasoning(model, processor, images, PROMPTS, "realism", num_samples=2,
                                       max_new_tokens=6, seed=3))  # fmt: skip
    assert torch.equal(runs[0].reasoning_ids, runs[1].reasoning_ids)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, rtol=0, atol=1e-6)
    assert runs[0].reasoning_ids.shape[1] > 1  # max_new_tokens of the file did not apply either


@pytest.mark.parametrize(
    "argv",
    [["model", "info"]],
)
def test_commands_that_take_only_package_models_say_so_for_a_native_folder(
    native_dir, tmp_path, capsys, argv
):
    """One line, naming the folder and the limitation, instead of a traceback or a silent misread."""
    from zreward_deploy.cli import main

    _, folder, _, _ = native_dir
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    args = [*args[:2], str(folder)] if args[:2] == ["model", "info"] else [*args, "--model", str(folder)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert str(folder) in err and "native VLM checkpoint" in err and "take it as it is" in err


def test_the_realistic_qwen2_5_vl_3b_config_has_the_published_size():
    """Built on the meta device (no memory, no download): Qwen2.5-VL-3B-Instruct's shapes give its published
    3.75 B parameters, tied embeddings, and a one-pass model whose image-token grid follows its patch 14,
    merge 2 at 448 px (256 tokens)."""
    from transformers import AutoModelForImageTextToText

    from zreward_deploy.native import realistic_config

    config = realistic_config("qwen2.5-vl-3b")
    with torch.device("meta"):
        hf = AutoModelForImageTextToText.from_config(config)
    assert abs(sum(p.numel() for p in hf.parameters()) / 1e9 - 3.75) < 0.01
    assert hf.get_input_embeddings().weight is hf.get_output_embeddings().weight
    head = [1, 2, 151652, *[151655] * 256, 151653, 3]
    reward = NativeRewardModel(hf, head, [16, 17, 18, 19, 20], VALUES, (448, 448))
    assert reward.num_image_tokens == 256 and reward.grid == (16, 16)
    with pytest.raises(InvalidModelError, match="size"):
        realistic_config("qwen2.5-vl-700b")


def test_data_check_reads_the_rubric_of_a_native_folder(native_dir, tmp_path, capsys):
    """`zreward data check DIR --model NATIVE_FOLDER` validates the labels against the folder's own rubric
    and scale (zreward_native.json), not the package config it does not have."""
    import json
    import shutil

    from zreward_deploy.cli import main
    from zreward_deploy.data.synth import SynthConfig, generate_dataset

    _, folder, _, _ = native_dir
    generate_dataset(tmp_path / "data", SynthConfig(prompts=3, images_per_prompt=2, image_size=32, seed=0))
    assert main(["data", "check", str(tmp_path / "data"), "--model", str(folder)]) == 0
    assert capsys.readouterr().out.startswith("ok:")
    settings = json.loads((folder / "zreward_native.json").read_text())
    narrowed = tmp_path / "narrow"
    shutil.copytree(folder, narrowed)
    settings["score_scale"] = {"values": [1.0, 2.0, 3.0], "tokens": ["1", "2", "3"]}
    (narrowed / "zreward_native.json").write_text(json.dumps(settings))
    assert main(["data", "check", str(tmp_path / "data"), "--model", str(narrowed)]) != 0  # labels up to 5


def test_smolvlm_at_a_side_its_patches_do_not_tile_scores_like_the_hf_forward():
    """SmolVLM-Instruct reads 384 px in 27 patches of 14 (the patch convolution drops 6 px): a side that
    is not a multiple of patch x shuffle is valid when the patch count is a multiple of the shuffle. At
    34 px, patch 4 (8 patches, 2 px dropped), shuffle 2: 16 image tokens, and the one pass equals the HF
    forward run per dimension."""
    from zreward_deploy.native import build_native_preset

    model, processor = build_native_preset("smolvlm", seed=2, image_size=34)
    with torch.no_grad():
        for p in model.model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.1)
    assert model.grid == (4, 4)
    pixel_values = torch.randn(2, 3, 34, 34, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([processor.prompt_ids("a red cube")] * 2)
    suffixes = processor.suffix_ids(["realism", "alignment"])
    with torch.no_grad():
        probs = model(pixel_values, ids, torch.ones_like(ids), suffixes).probs
        for b in range(2):
            for d, suffix in enumerate(suffixes):
                seq = torch.cat([model.head_ids, ids[b], suffix])[None]
                logits = model.model(
                    input_ids=seq,
                    attention_mask=torch.ones_like(seq),
                    **model.hf_image_inputs(pixel_values[b : b + 1]),
                ).logits[0, -1]
                want = torch.softmax(logits[processor.score_token_ids] / model.temperature, -1)
                torch.testing.assert_close(probs[b, d], want, rtol=0, atol=2e-6)
    with pytest.raises(InvalidModelError, match="pixel shuffle"):
        build_native_preset("smolvlm", image_size=36)  # 9 patches: the shuffle by 2 does not divide them


def test_native_images_are_resized_like_the_qwen_vl_processors_pil_bicubic(native_dir, monkeypatch):
    """A native model resizes bicubic (antialiased, clipped), what Qwen2VLImageProcessor does with PIL: on a
    picture with hard edges, shrunk to the model's 32 px, within 4 grey levels of PIL's bicubic (0.5 on
    average), where the package's bilinear is 15+ levels off at the edges. The streamed decode (strips of
    rows, width then height) equals resizing the whole float image, bit for bit, with bicubic too."""
    from PIL import Image

    from zreward_deploy import processing

    _, _, _, processor = native_dir
    assert processor.resample == "bicubic"
    y, x = np.mgrid[0:96, 0:120]
    grey = ((((y // 8) + (x // 8)) % 2) * 180 + x * 0.5).clip(0, 255)
    picture = np.stack([grey, 255 - grey, grey * 0.5 + 40], -1).astype(np.uint8)
    side = processor.config.image_size
    pil = np.asarray(Image.fromarray(picture).resize((side, side), Image.BICUBIC)).astype(np.float64)
    whole = torch.from_numpy(picture).permute(2, 0, 1).float()[None] / 255
    for mode, within in (("bicubic", True), ("bilinear", False)):
        ours = processing._clip(processing._resize(whole, (side, side), mode), mode)[0]
        diff = np.abs(ours.permute(1, 2, 0).numpy() * 255 - pil)
        assert (diff.max() <= 4 and diff.mean() <= 0.5) == within, (mode, diff.max(), diff.mean())
    monkeypatch.setattr(processing, "STRIP_PIXELS", 120 * 10)  # ten rows per strip: 10 strips
    streamed = processor.model_image(picture)
    reference = processing._clip(processing._resize(whole, (side, side), "bicubic"), "bicubic")[0]
    assert torch.equal(streamed, reference)
