"""Each trainer adapter called exactly the way its trainer calls it (the trainer's file is cited in each
adapter's docstring), against a local scorer and against the server. Expected values come from the
in-process ``Scorer`` on the same pixels."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import types

import numpy as np
import pytest
import torch

from .helpers import random_image

PROMPTS = ["a red cube on a table", "two blue spheres", "a green cone", "three small cubes"]


def _float_batch(n=4, h=40, w=48):
    """A diffusion pipeline's ``output_type="pt"`` batch: float ``[B, 3, H, W]`` in [0, 1]."""
    return (
        torch.from_numpy(np.stack([random_image(10 + i, (h, w)) for i in range(n)])).permute(0, 3, 1, 2)
        / 255.0
    )


def test_flow_grpo_score_fn_in_a_thread_pool_like_train_sd3(scorer):
    from zreward_deploy.adapters.flow_grpo import make_score_fn

    reward_fn = make_score_fn(scorer)
    images = _float_batch()
    metadata = [{"tag": "colors"} for _ in PROMPTS]
    # scripts/train_sd3.py: executor.submit(reward_fn, images, prompts, prompt_metadata), .result() later
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        future = executor.submit(reward_fn, images, PROMPTS, metadata)
        scores, info = future.result()
    rewards = torch.as_tensor(scores).float()  # what the trainer does with them
    assert rewards.shape == (4,) and isinstance(info, dict)
    want = scorer.score(list(images), PROMPTS).reward
    assert torch.allclose(rewards, want, atol=1e-6)


def test_flow_grpo_multi_score_names_share_one_forward(controlled):
    from zreward_deploy.adapters.flow_grpo import make_score_fns

    fns = make_score_fns(controlled, names=["zreward", "zreward_alignment", "zreward_realism"])
    images = _float_batch()
    # flow_grpo/rewards.py multi_score: each registered reward called in turn on the same images object
    score_details = {}
    weights = {"zreward": 1.0, "zreward_alignment": 0.5, "zreward_realism": 0.5}
    for name, _weight in weights.items():
        scores, _ = fns[name](images, PROMPTS, [{}] * 4)
        score_details[name] = torch.as_tensor(scores).float()
    avg = sum(weights[n] * score_details[n] for n in weights)
    assert len(controlled.calls) == 1  # one forward for all three names
    ref = controlled.score(list(images), PROMPTS, dimensions=["alignment", "realism"])
    assert torch.allclose(score_details["zreward_alignment"], ref.mean[:, 0], atol=1e-6)
    assert torch.allclose(score_details["zreward_realism"], ref.mean[:, 1], atol=1e-6)
    assert torch.isfinite(avg).all()
    fns["zreward"](_float_batch(), PROMPTS, None)  # a new images object: a new forward
    assert len(controlled.calls) == 3  # (the reference call above was the second)


def test_flow_grpo_score_fn_against_the_server_takes_tensor_uint8_and_pil(scorer, serve):
    from PIL import Image

    from zreward_deploy.adapters.flow_grpo import make_score_fn

    url, _ = serve(scorer)
    reward_fn = make_score_fn(url)
    images = _float_batch()
    uint8 = (images * 255).round().clamp(0, 255).to(torch.uint8)  # what the client sends, lossless from here
    want = scorer.score(list(uint8.permute(0, 2, 3, 1).numpy()), PROMPTS).reward.numpy()
    scores, _ = reward_fn(images, PROMPTS, None)
    np.testing.assert_allclose(scores, want, atol=1e-6)
    nhwc = uint8.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(reward_fn(nhwc, PROMPTS, None)[0], want, atol=1e-6)
    pil = [Image.fromarray(a) for a in nhwc]
    np.testing.assert_allclose(reward_fn(pil, PROMPTS, None)[0], want, atol=1e-6)


def test_flow_grpo_score_fn_raises_on_a_failed_item_instead_of_a_substitute(scorer, serve):
    from zreward_deploy.adapters.flow_grpo import make_score_fn
    from zreward_deploy.serving.client import ZRewardClientError

    url, _ = serve(scorer)
    with pytest.raises(ZRewardClientError, match="1 item"):
        make_score_fn(url)(_float_batch(2), ["fine", ""], None)
    with pytest.raises(ZRewardClientError, match="1 item"):
        make_score_fn(scorer)(_float_batch(2), ["fine", ""], None)


def test_verl_omni_compute_score_per_sample_coroutines(scorer, serve, tiny_dir):
    from zreward_deploy.adapters.verl_omni import compute_score

    url, service = serve(scorer, max_wait_ms=20)
    images = (_float_batch() * 255).round().to(torch.uint8)  # verl-omni's solution_image: uint8 [C, H, W]
    want = scorer.score(list(images.permute(0, 2, 3, 1).numpy()), PROMPTS)

    async def reward_loop(**kwargs):
        # RewardLoopWorker: one coroutine per item, gathered
        return await asyncio.gather(
            *[
                compute_score(
                    data_source="t2i",
                    solution_image=images[i],
                    ground_truth=PROMPTS[i],
                    extra_info={"index": i},
                    **kwargs,
                )
                for i in range(len(PROMPTS))
            ]
        )

    # the server twice, each in a new event loop (a client belongs to the loop that made it)
    for kwargs in ({"server_url": url}, {"model_path": str(tiny_dir)}, {"server_url": url}):
        results = asyncio.run(reward_loop(**kwargs))
        for i, result in enumerate(results):
            assert set(result) == {"score", *want.dimensions}
            assert result["score"] == pytest.approx(float(want.reward[i]), abs=1e-6)
            assert result["alignment"] == pytest.approx(float(want.mean[i, 0]), abs=1e-6)
    assert service.batcher.batches_run < len(PROMPTS)  # the per-sample calls were coalesced by the server


def test_flow_factory_class_loaded_by_dotted_path_like_its_loader(scorer, serve, tiny_dir):
    from PIL import Image

    url, _ = serve(scorer)
    # src/flow_factory/rewards/registry.py + loader.py: import the dotted path, cls(config=, accelerator=)
    module_name, _, cls_name = "zreward_deploy.adapters.flow_factory.ZRewardPointwise".rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    images = [Image.fromarray(random_image(20 + i)) for i in range(3)]
    want = scorer.score(images, PROMPTS[:3])
    for kwargs in ({"server_url": url}, {"model_path": str(tiny_dir)}):
        config = types.SimpleNamespace(
            reward_model=f"{module_name}.{cls_name}",
            device="cpu",
            dtype="float32",
            batch_size=16,
            extra_kwargs=kwargs,
        )
        model = cls(config=config, accelerator=None)
        assert model.required_fields == ("image", "prompt")
        output = model(prompt=PROMPTS[:3], image=images, metadata='{"k": 1}')
        np.testing.assert_allclose(np.asarray(output.rewards), want.reward.numpy(), atol=1e-6)
        np.testing.assert_allclose(output.extra_info["zreward_realism"], want.mean[:, 1].numpy(), atol=1e-6)
