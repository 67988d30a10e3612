"""Teacher generation: sampling with the KV cache, log-probs, and the score after the reasoning."""

import pytest
import torch

from zreward_deploy.errors import UnknownDimensionError, ZRewardInputError
from zreward_deploy.generation import generate_reasoning, teacher_forward
from zreward_deploy.presets import build_preset

PROMPTS = ["two red cubes", "a blue sphere on the left of a yellow star", "one cone"]


@pytest.fixture(scope="module")
def stopping_teacher():
    """A tiny teacher whose </think> row of lm_head leans towards the mean hidden state, so traces stop
    at different lengths (scale 8 measured to give a mix of stopped and cut traces for this seed)."""
    model, processor = build_preset("tiny", seed=3)
    think_end = processor.think_end_ids()
    assert len(think_end) == 1
    with torch.no_grad():
        probe = model.decoder_hidden(
            processor.preprocess_tensor(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))),
            *processor.encode_prompts([*PROMPTS, "x"]),
        ).mean((0, 1))
        model.get_output_embeddings().weight[think_end[0]] += 8.0 * probe / probe.norm() ** 2
    return model, processor


def test_shapes_probs_and_determinism(tiny):
    model, processor = tiny
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = generate_reasoning(
        model, processor, images, PROMPTS, "realism", num_samples=2, max_new_tokens=8, seed=1
    )
    assert out.reasoning_ids.shape == (6, 8) and out.logprobs.shape == (6, 8)
    assert out.probs.shape == (6, 5) and out.mean.shape == (6,)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(6))
    assert out.item_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert (out.logprobs <= 0).all() and len(out.texts) == 6
    again = generate_reasoning(
        model, processor, images, PROMPTS, "realism", num_samples=2, max_new_tokens=8, seed=1
    )
    assert torch.equal(out.reasoning_ids, again.reasoning_ids)
    torch.testing.assert_close(out.probs, again.probs)
    other = generate_reasoning(
        model, processor, images, PROMPTS, "realism", num_samples=2, max_new_tokens=8, seed=2
    )
    assert not torch.equal(out.reasoning_ids, other.reasoning_ids)


def test_seed_leaves_global_rng_alone(tiny):
    model, processor = tiny
    image = torch.rand(1, 3, 32, 32)
    torch.manual_seed(123)
    generate_reasoning(model, processor, image, PROMPTS[:1], "realism", max_new_tokens=4, seed=7)
    after_generation = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after_generation)


def test_logprobs_equal_teacher_forced_forward(stopping_teacher):
    model, processor = stopping_teacher
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = generate_reasoning(
        model, processor, images, PROMPTS, "alignment", num_samples=3, max_new_tokens=16, seed=0
    )
    lengths = out.reasoning_mask.sum(1)
    # the raised stop logit gives ragged traces: some stopped early, some were cut
    assert out.finished.any() and lengths.min() < lengths.max()
    think_end = processor.think_end_ids()[0]
    for i in range(out.reasoning_ids.shape[0]):
        n = int(lengths[i])
        if out.finished[i]:
            assert out.reasoning_ids[i, n - 1] == think_end
        assert (out.reasoning_ids[i, n:] == processor.tokenizer.pad_token_id).all()
        assert (out.logprobs[i, n:] == 0).all()
    pixel_values = processor.preprocess_tensor(images).repeat_interleave(3, 0)
    with torch.no_grad():
        logprobs, scores = teacher_forward(
            model,
            processor,
            pixel_values,
            out.prompt_ids,
            out.reasoning_ids,
            out.reasoning_mask,
            out.finished,
        )
    torch.testing.assert_close(logprobs, out.logprobs, atol=2e-5, rtol=0)
    torch.testing.assert_close(scores.probs, out.scores.probs, atol=1e-6, rtol=0)


def test_teacher_forward_gradients(tiny):
    model, processor = build_preset("tiny", seed=5)
    images = torch.rand(2, 3, 32, 32)
    out = generate_reasoning(model, processor, images, PROMPTS[:2], "realism", max_new_tokens=5, seed=0)
    logprobs, scores = teacher_forward(
        model,
        processor,
        processor.preprocess_tensor(images),
        out.prompt_ids,
        out.reasoning_ids,
        out.reasoning_mask,
        out.finished,
    )
    (logprobs.sum() + scores.mean.sum()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def test_unfinished_traces_get_think_end_before_answer(tiny):
    from zreward_deploy.generation import teacher_sequences

    _, processor = tiny
    think_end, answer = processor.think_end_ids(), processor.teacher_answer_ids()
    ids, mask, start = teacher_sequences(processor, [[1, 2], [3]], [[7, 8], [9, *think_end]], [False, True])
    row0 = ids[0, : int(mask[0].sum())].tolist()
    row1 = ids[1, : int(mask[1].sum())].tolist()
    assert row0 == [1, 2, 7, 8, *think_end, *answer]
    assert row1 == [3, 9, *think_end, *answer]  # not closed twice
    assert start.tolist() == [2, 1]


def test_bad_generation_arguments(tiny):
    model, processor = tiny
    img = torch.rand(1, 3, 32, 32)
    with pytest.raises(UnknownDimensionError):
        generate_reasoning(model, processor, img, ["a"], "sharpness")
    with pytest.raises(ZRewardInputError):
        generate_reasoning(model, processor, img, ["a", "b"], "realism")
    with pytest.raises(ZRewardInputError):
        generate_reasoning(model, processor, img, ["a"], "realism", num_samples=0)


def test_a_language_models_generation_config_does_not_change_sampling():
    """A model composed from a published LM checkpoint carries its generation_config.json (repetition
    penalty, top-k, ...); sampling ignores it, so the traces follow the distribution whose log-probs are
    recorded."""
    model, processor = build_preset("tiny", seed=0)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prompts = ["a red cube", "two blue spheres"]
    plain = generate_reasoning(
        model, processor, images, prompts, "realism", num_samples=2, max_new_tokens=6, seed=5
    )
    config = model.language_model.generation_config
    config.repetition_penalty, config.min_p = 50.0, 0.9  # min_p 0.9: all but near-greedy tokens cut
    again = generate_reasoning(
        model, processor, images, prompts, "realism", num_samples=2, max_new_tokens=6, seed=5
    )
    assert torch.equal(plain.reasoning_ids, again.reasoning_ids)
    assert model.language_model.generation_config.repetition_penalty == 50.0  # the model's own is put back
