"""ZRewardModel: static layout, score head, and all dimensions in one pass (docs/design.md §3)."""

import pytest
import torch

from zreward_deploy.modeling import multi_suffix_mask
from zreward_deploy.presets import build_preset

PROMPTS = [
    "two red cubes on a wooden table",
    "a star",
    "three blue spheres to the left of a large yellow cone under a bright sky",
    "one green ring",
    "a purple triangle above a white box next to two small black circles",
]


def _sharp(text_model_type, vision="siglip"):
    # A low score temperature makes the random model's distributions peaked, so that a mistake in the
    # mask or the positions shows up as a large difference in probs (not hidden in near-uniform rows).
    return build_preset(
        "tiny", text_model_type=text_model_type, vision_model_type=vision, seed=1, score_temperature=0.1
    )


def _separate_passes(model, processor, pixel_values, prompts, suffixes):
    """The reference: D plain causal passes over [image][prompt][suffix_d], one per dimension."""
    probs = []
    for suffix in suffixes:
        ids, mask = processor.pad([processor.prompt_ids(p) + suffix.tolist() for p in prompts])
        probs.append(model.score_sequences(pixel_values, ids, mask).probs[:, 0])
    return torch.stack(probs, dim=1)


@pytest.mark.parametrize("text_model_type", ["qwen2", "qwen3", "llama"])
@pytest.mark.parametrize("batch", [1, 3, 5])
def test_one_pass_equals_separate_passes(text_model_type, batch):
    model, processor = _sharp(text_model_type)
    prompts = PROMPTS[:batch]  # ragged lengths: right padding inside the batch for batch > 1
    dims = model.config.get_rubric().names
    suffixes = processor.suffix_ids(dims)
    pixel_values = processor.preprocess_tensor(
        torch.rand(batch, 3, 37, 45, generator=torch.Generator().manual_seed(batch))
    )
    ids, mask = processor.encode_prompts(prompts)
    with torch.no_grad():
        one = model(pixel_values, ids, mask, suffixes)
        ref = _separate_passes(model, processor, pixel_values, prompts, suffixes)
    assert one.probs.shape == (batch, 4, 5)
    assert ref.max() > 0.4, "distributions should be peaked for this test to be sensitive"
    assert (one.probs - ref).abs().max() <= 1e-5


def test_one_pass_clip_vision_tower():
    model, processor = _sharp("qwen2", vision="clip")
    assert model.config.num_image_tokens == 16  # CLS dropped by "patch" selection
    suffixes = processor.suffix_ids(["realism", "alignment"])
    pixel_values = processor.preprocess_tensor(torch.rand(3, 3, 32, 32))
    ids, mask = processor.encode_prompts(PROMPTS[:3])
    with torch.no_grad():
        one = model(pixel_values, ids, mask, suffixes)
        ref = _separate_passes(model, processor, pixel_values, PROMPTS[:3], suffixes)
    assert (one.probs - ref).abs().max() <= 1e-5


def _consecutive_positions(real):
    def layout(attention_mask, num_image, lengths, dtype):
        m, _ = real(attention_mask, num_image, lengths, dtype)
        return m, torch.arange(m.shape[-1]).unsqueeze(0).expand(attention_mask.shape[0], -1)

    return layout


def _suffixes_see_each_other(real):
    def layout(attention_mask, num_image, lengths, dtype):
        m, pos = real(attention_mask, num_image, lengths, dtype)
        total = m.shape[-1]
        causal = torch.ones(total, total, dtype=torch.bool).tril()
        prefix = num_image + attention_mask.shape[1]
        m[:, :, prefix:, prefix:] = torch.zeros_like(m[:, :, prefix:, prefix:]).masked_fill(
            ~causal[prefix:, prefix:], torch.finfo(dtype).min
        )
        return m, pos

    return layout


@pytest.mark.parametrize("broken", [_consecutive_positions, _suffixes_see_each_other])
def test_equivalence_check_is_sensitive(monkeypatch, broken):
    """Negative controls: a layout that does not restart positions, or that lets a suffix see the ones
    before it, differs from the separate passes by far more than 1e-5, so the bound above really tests
    the layout."""
    import zreward_deploy.modeling as modeling

    model, processor = _sharp("qwen2")
    suffixes = processor.suffix_ids(model.config.get_rubric().names)
    pixel_values = processor.preprocess_tensor(torch.rand(3, 3, 32, 32))
    ids, mask = processor.encode_prompts(PROMPTS[:3])
    monkeypatch.setattr(modeling, "multi_suffix_mask", broken(modeling.multi_suffix_mask))
    with torch.no_grad():
        wrong = model(pixel_values, ids, mask, suffixes)
        ref = _separate_passes(model, processor, pixel_values, PROMPTS[:3], suffixes)
    assert (wrong.probs - ref).abs().max() > 1e-3


def test_mask_structure():
    attention_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    mask, pos = multi_suffix_mask(attention_mask, num_image=2, suffix_lengths=[2, 1], dtype=torch.float32)
    allowed = mask[:, 0] == 0  # [B, L, L], L = 2 + 3 + 3 = 8
    assert mask.shape == (2, 1, 8, 8)
    # suffix 2 (position 7) sees the prefix and itself, not suffix 1 (positions 5, 6)
    assert allowed[0, 7].tolist() == [True] * 5 + [False, False, True]
    # padded prompt keys (row 1, positions 3, 4) are invisible to every query
    assert not allowed[1, :, 3:5].any()
    # every query row sees the first image token, so softmax never meets an all-masked row
    assert allowed[:, :, 0].all()
    # positions restart after each row's own prefix: row 1 has prompt length 1 -> suffixes start at 3
    assert pos[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 5]
    assert pos[1, 5:].tolist() == [3, 4, 3]


def test_batch_items_do_not_interact(tiny):
    """Scoring items together (with padding) equals scoring each alone: padding is masked out."""
    model, processor = tiny
    suffixes = processor.suffix_ids(["alignment", "plausibility"])
    pixel_values = processor.preprocess_tensor(torch.rand(3, 3, 32, 32))
    ids, mask = processor.encode_prompts(PROMPTS[:3])
    with torch.no_grad():
        together = model(pixel_values, ids, mask, suffixes).probs
        alone = torch.cat(
            [
                model(pixel_values[i : i + 1], *processor.encode_prompts([p]), suffixes).probs
                for i, p in enumerate(PROMPTS[:3])
            ]
        )
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)


def test_score_head_reads_only_score_rows(tiny):
    """The head uses the K score-token rows of lm_head and never calls the full-vocabulary projection."""
    model, processor = build_preset("tiny", seed=2)
    head = model.get_output_embeddings()
    head.forward = lambda *a, **k: (_ for _ in ()).throw(AssertionError("full-vocabulary lm_head was called"))
    suffixes = processor.suffix_ids(["realism"])
    pv = processor.preprocess_tensor(torch.rand(2, 3, 32, 32))
    ids, mask = processor.encode_prompts(PROMPTS[:2])
    with torch.no_grad():
        before = model(pv, ids, mask, suffixes)
        other = [i for i in range(head.weight.shape[0]) if i not in model.config.score_token_ids][:50]
        head.weight[other] += 10.0  # rows of other tokens do not matter
        after = model(pv, ids, mask, suffixes)
        head.weight[model.config.score_token_ids[0]] += 1.0  # a score row does
        changed = model(pv, ids, mask, suffixes)
    torch.testing.assert_close(before.probs, after.probs)
    assert (changed.probs - before.probs).abs().max() > 1e-4


def test_outputs_are_consistent_moments(tiny):
    model, processor = tiny
    ids, mask = processor.encode_prompts(PROMPTS[:2])
    pv = processor.preprocess_tensor(torch.rand(2, 3, 32, 32))
    with torch.no_grad():
        out = model(pv, ids, mask, processor.suffix_ids(["realism", "alignment"]), return_logprobs=True)
    values = torch.arange(1.0, 6.0)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(2, 2))
    torch.testing.assert_close(out.mean, (out.probs * values).sum(-1))
    var = (out.probs * (values - out.mean.unsqueeze(-1)) ** 2).sum(-1)
    torch.testing.assert_close(out.var, var)
    torch.testing.assert_close(out.std, var.sqrt())
    torch.testing.assert_close(out.logprobs.exp(), out.probs)
    assert out.probs.dtype == torch.float32


def test_bf16_model_keeps_fp32_probabilities():
    model, processor = build_preset("tiny", seed=0)
    model = model.to(torch.bfloat16)
    ids, mask = processor.encode_prompts(PROMPTS[:2])
    pv = processor.preprocess_tensor(torch.rand(2, 3, 32, 32))
    with torch.no_grad():
        out = model(pv, ids, mask, processor.suffix_ids(["realism"]))
    assert out.probs.dtype == torch.float32
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(2, 1))


def test_gradients_reach_the_pixels(tiny):
    model, processor = tiny
    images = torch.rand(2, 3, 40, 40, requires_grad=True)
    ids, mask = processor.encode_prompts(PROMPTS[:2])
    out = model(
        processor.preprocess_tensor(images), ids, mask, processor.suffix_ids(["realism", "alignment"])
    )
    out.mean.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_score_head_backend_flag_routes_the_model(monkeypatch, backend):
    """config.score_head_backend forces the kernel (run by Triton's interpreter here) or the reference;
    both give the same distributions and gradients."""
    import zreward_deploy.kernels.score_head as kernel_module

    if backend == "triton":
        kernels = pytest.importorskip("zreward_deploy.kernels._score_head_triton", reason="triton is missing")
        if (problem := kernels.interpreter_problem()) is not None:
            pytest.skip(problem)
    reference, _ = build_preset("tiny", seed=6, score_temperature=0.3)
    forced, processor = build_preset("tiny", seed=6, score_temperature=0.3, score_head_backend=backend)
    pv = processor.preprocess_tensor(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    ids, mask = processor.encode_prompts(PROMPTS[:3])
    suffixes = processor.suffix_ids(["realism", "alignment"])
    expected = reference(pv, ids, mask, suffixes)
    expected.mean.sum().backward()
    calls = []
    real_ref = kernel_module.score_head_ref
    monkeypatch.setattr(kernel_module, "score_head_ref", lambda *a, **k: calls.append(1) or real_ref(*a, **k))
    out = forced(pv, ids, mask, suffixes)
    out.mean.sum().backward()
    assert (len(calls) > 0) == (backend == "torch")
    torch.testing.assert_close(out.probs, expected.probs, atol=1e-5, rtol=0)
    head, ref_head = forced.get_output_embeddings().weight, reference.get_output_embeddings().weight
    torch.testing.assert_close(head.grad, ref_head.grad, atol=1e-5, rtol=1e-4)
