"""Unit tests of the trainer building blocks: config resolution, data order, rollouts, the reasoning
scorer."""

from __future__ import annotations

import pytest
import torch

from zreward_deploy.generation import derive_seed
from zreward_deploy.scoring import BaseScorer, ReasoningScorer
from zreward_deploy.training.config import ConfigError
from zreward_deploy.training.gdso import GDSOConfig
from zreward_deploy.training.loop import EpochSampler
from zreward_deploy.training.rollouts import (
    SamplingConfig,
    frozen_pass,
    policy_logprobs,
    sample_pair_rollouts,
)
from zreward_deploy.training.sft import SFTConfig

# --------------------------------------------------------------------------------------------------
# Config: defaults < YAML < key=value; unknown keys and wrong types are errors
# --------------------------------------------------------------------------------------------------


def test_config_precedence_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: d\nbeta: 0.1\ngroup_size: 8\ndimensions: [realism]\n")
    cfg = GDSOConfig.from_sources(path, ["beta=0.2", "learning_rate=1e-4"])
    assert (cfg.beta, cfg.group_size, cfg.dimensions) == (0.2, 8, ["realism"])
    assert cfg.learning_rate == 1e-4  # "1e-4" is a YAML string; float fields accept it
    assert cfg.alpha_pt == 0.5  # default kept
    # the file a run writes is a valid config for the same method, and only for it
    (tmp_path / "run.yaml").write_text(cfg.to_yaml())
    assert GDSOConfig.from_sources(tmp_path / "run.yaml") == cfg
    with pytest.raises(ConfigError, match="is a 'gdso' config"):
        SFTConfig.from_sources(tmp_path / "run.yaml")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"data": "d", "group_sise": 4}, "did you mean 'group_size'"),
        ({"data": "d", "group_size": 2.5}, "must be an integer"),
        ({"data": "d", "include_score_token": "yes"}, "true or false"),
        # a string is a comma-separated list (dimensions=realism,alignment); a number is no list
        ({"data": "d", "dimensions": 5}, "must be a list"),
        ({"data": "d", "group_size": 0}, "must be >= 1"),
        ({"data": "d", "lr_scheduler": "step"}, "lr_scheduler"),
        ({}, "data"),
    ],
)
def test_config_rejects(values, message, tmp_path):
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match=message):
        GDSOConfig.from_sources(path)


def test_config_file_must_be_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        SFTConfig.from_sources(path)


# --------------------------------------------------------------------------------------------------
# Data order
# --------------------------------------------------------------------------------------------------


def test_sampler_covers_each_epoch_and_resumes_exactly():
    s = EpochSampler(size=10, batch_size=4, seed=3)
    batches = [s.next_batch() for _ in range(5)]  # 20 items = two epochs of 10
    assert sorted(batches[0] + batches[1] + batches[2][:2]) == list(range(10))
    assert batches[0] + batches[1] + batches[2][:2] != list(range(10))  # shuffled
    s2 = EpochSampler(size=10, batch_size=4, seed=3)
    for _ in range(2):
        s2.next_batch()
    s3 = EpochSampler(size=10, batch_size=4, seed=3)
    s3.load_state_dict(s2.state_dict())
    assert [s3.next_batch() for _ in range(3)] == batches[2:]
    assert EpochSampler(size=10, batch_size=4, seed=4).next_batch() != batches[0]


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "rollout", 3, 1) == derive_seed(0, "rollout", 3, 1)
    assert len({derive_seed(0, "rollout", 3, i) for i in range(100)}) == 100
    assert 0 <= derive_seed("x") < 2**63


# --------------------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair_batch(small_data, tiny):
    from zreward_deploy.data import load_split
    from zreward_deploy.training.data import PairData

    _, processor = tiny
    data = PairData(load_split(small_data, "train"), processor, ["realism", "plausibility"])
    assert all(p.label_w > p.label_l for p in data.pairs)
    return data.batch([0, 1, len(data) - 1])


def _pairs(tiny, batch, include_score_token=False, chunk_size=8):
    model, processor = tiny
    return sample_pair_rollouts(
        model,
        processor,
        batch,
        3,
        SamplingConfig(max_new_tokens=5, include_score_token=include_score_token),
        chunk_size=chunk_size,
        chunk_seed=lambda start, dim: derive_seed(7, start, dim),
        score_range=4.0,
        lambda_pt=0.5,
        lambda_pw=0.5,
    )


def test_pair_rollout_layout_rewards_and_teacher_forced_logprobs(tiny, pair_batch):
    model, processor = tiny
    pairs = _pairs(tiny, pair_batch)
    b, g = 3, 3
    assert pairs.rewards.shape == pairs.advantages.shape == (b, 2, g)
    assert len(pairs.rollout) == 2 * b * g
    # advantages are normalised within each side's group (to the rounding of rewards that differ by only
    # ~1e-4 between an untrained model's traces, scaled up by 1/std)
    torch.testing.assert_close(pairs.advantages.mean(-1), torch.zeros(b, 2), atol=1e-3, rtol=0)
    # rows (pair, side, sample): row 0..2 are pair 0's w image, rows 3..5 its l image
    torch.testing.assert_close(pairs.rollout.images[0], pair_batch.images_w[0])
    torch.testing.assert_close(pairs.rollout.images[3], pair_batch.images_l[0])
    torch.testing.assert_close(pairs.rollout.images[6], pair_batch.images_w[1])
    # by default the policy tokens are the reasoning tokens only
    assert torch.equal(pairs.rollout.policy_mask, pairs.rollout.reasoning_mask.bool())
    # teacher forcing under the sampling model reproduces the sampled scores
    token_logp, log_q, mu = policy_logprobs(frozen_pass(model, processor), pairs.rollout, "cpu")
    torch.testing.assert_close(mu, pairs.rollout.mu, atol=1e-5, rtol=0)
    torch.testing.assert_close(log_q.exp(), pairs.rollout.probs, atol=1e-5, rtol=0)
    assert token_logp.shape == pairs.rollout.reasoning_mask.shape
    assert (token_logp[pairs.rollout.reasoning_mask.bool()] < 0).all()


def test_score_token_is_a_policy_token_only_when_asked(tiny, pair_batch):
    model, processor = tiny
    pairs = _pairs(tiny, pair_batch, include_score_token=True)
    rollout = pairs.rollout
    mask = rollout.policy_mask
    assert mask.shape[1] == rollout.reasoning_mask.shape[1] + 1 and mask[:, -1].all()
    token_logp, log_q, _ = policy_logprobs(frozen_pass(model, processor), rollout, "cpu")
    # the extra column is log q(s) of the sampled score token
    torch.testing.assert_close(token_logp[:, -1], log_q.gather(1, rollout.score_index.view(-1, 1)).squeeze(1))
    # and the reasoning part is unchanged by the flag
    plain = _pairs(tiny, pair_batch)
    assert torch.equal(plain.rollout.reasoning_ids, rollout.reasoning_ids)


def test_traces_depend_on_the_chunk_not_on_the_batch_split(tiny, pair_batch):
    """With chunk_size=1 each pair is sampled alone: sampling pairs [0, 1, 2] at once or [1, 2] alone
    (as a second process would, its chunk indices shifted by its offset) gives pair 1 the same traces."""
    model, processor = tiny
    whole = _pairs(tiny, pair_batch, chunk_size=1)
    from zreward_deploy.training.data import PairBatch

    tail = PairBatch(*(getattr(pair_batch, f)[1:] for f in PairBatch.__dataclass_fields__))
    part = sample_pair_rollouts(
        model,
        processor,
        tail,
        3,
        SamplingConfig(max_new_tokens=5),
        chunk_size=1,
        chunk_seed=lambda start, dim: derive_seed(7, start + 1, dim),
        score_range=4.0,
        lambda_pt=0.5,
        lambda_pw=0.5,
    )
    n = 2 * 3  # rows of one pair
    width = min(whole.rollout.reasoning_ids.shape[1], part.rollout.reasoning_ids.shape[1])
    assert torch.equal(whole.rollout.reasoning_ids[n : 2 * n, :width], part.rollout.reasoning_ids[:n, :width])


def test_reasoning_scorer_evaluates_and_counts_tokens(tiny, small_data):
    from zreward_deploy.data import load_split
    from zreward_deploy.evaluation import evaluate

    model, processor = tiny
    records = load_split(small_data, "test")
    scorer = ReasoningScorer(model, processor, num_samples=2, max_new_tokens=3, seed=0, max_batch_size=2)
    ev = evaluate(scorer, records)
    assert ev.probs.shape == (len(records), 4, 5)
    torch.testing.assert_close(
        torch.as_tensor(ev.probs.sum(-1)), torch.ones(len(records), 4, dtype=torch.float64)
    )
    assert scorer.images_scored == len(records)
    assert 0 < scorer.tokens_generated <= len(records) * 4 * 2 * 3
    again = evaluate(
        ReasoningScorer(model, processor, num_samples=2, max_new_tokens=3, seed=0, max_batch_size=2), records
    )
    assert (ev.mean == again.mean).all()  # seeded: reproducible evaluations


# --------------------------------------------------------------------------------------------------
# Metrics log
# --------------------------------------------------------------------------------------------------


def test_metrics_writer_truncates_on_resume_and_tensorboard_is_optional(tmp_path):
    import importlib.util
    import json

    from zreward_deploy.training.metrics_log import MetricsWriter, read_metrics

    w = MetricsWriter(tmp_path, enabled=True)
    for step in (1, 2, 3):
        w.log(step, {"loss": float(step)})
    MetricsWriter(tmp_path, enabled=True, resume_step=2)  # a resume from step 2 drops step 3
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0]) == {"step": 1, "loss": 1.0}
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ConfigError, match="pip install tensorboard"):
            MetricsWriter(tmp_path, enabled=True, tensorboard=True)
    else:
        tb = MetricsWriter(tmp_path, enabled=True, tensorboard=True)
        tb.log(1, {"loss": 1.0})
        tb.close()
        assert any((tmp_path / "tensorboard").iterdir())


@pytest.mark.parametrize("method", ["grpo", "gdso", "opd"])
def test_rollout_trainers_refuse_fsdp_with_a_clear_error(method):
    from accelerate import DistributedType

    from zreward_deploy.training.run import check_distributed_support

    with pytest.raises(ConfigError, match=f"{method} samples rollouts.*accelerate launch --multi_gpu"):
        check_distributed_support(method, str(DistributedType.FSDP))
    for ok in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        check_distributed_support(method, str(ok))
    for student in ("sft", "risd"):  # the students only call the wrapped forward: FSDP is fine
        check_distributed_support(student, str(DistributedType.FSDP))


def test_reasoning_scorer_is_a_scorer_with_a_centred_variance(monkeypatch, tmp_path):
    """The teacher's read-out goes through BaseScorer (per-item errors, dimensions) and computes its
    variance centred: for a distribution peaked on the top value, E[v²] − μ² in float32 cancels to noise
    larger than the true variance."""
    import numpy as np
    from PIL import Image

    import zreward_deploy.generation as generation
    from zreward_deploy.presets import build_preset

    model, processor = build_preset("tiny", seed=0)
    values = processor.config.get_score_scale().values
    k = len(values)
    eps = 1e-6
    peaked = torch.zeros(k)
    peaked[-1], peaked[-2] = 1 - eps, eps

    class Out:
        def __init__(self, n):
            self.probs = peaked.expand(n, k).clone()
            self.reasoning_mask = torch.ones(n, 2, dtype=torch.bool)

    monkeypatch.setattr(
        generation, "generate_reasoning", lambda m, p, images, prompts, dim, **kw: Out(len(prompts))
    )
    scorer = ReasoningScorer(model, processor, num_samples=1, max_new_tokens=2)
    assert isinstance(scorer, BaseScorer)
    good = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(good)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    result = scorer.score(
        [str(good), str(tmp_path / "bad.png")], "a", dimensions=["realism"], errors="collect"
    )
    assert list(result.errors) == [1] and torch.isnan(result.probs[1]).all()
    v = np.asarray(values, dtype=np.float64)
    q = peaked.double().numpy()
    mu = (q * v).sum()
    expected_std = np.sqrt((q * (v - mu) ** 2).sum())  # float64 reference, written out here
    assert abs(float(result.std[0, 0]) - expected_std) < 1e-2 * expected_std
