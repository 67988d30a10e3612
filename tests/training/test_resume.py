"""Exact resume: a run restarted from a checkpoint continues exactly as the uninterrupted run.

Each test trains 4 steps in one go (checkpoints at steps 2 and 4), then starts a *new* run from the
step-2 checkpoint and trains steps 3–4; the logged values and the final weights must be the same. A
cosine schedule makes a lost scheduler state visible, the data sampler's position a lost data order,
and GDSO's reference policy (reset every 3 steps, so the step-3 update still uses the step-0 π_ref)
a reference rebuilt from the resumed weights instead of restored.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from zreward_deploy.cli import main
from zreward_deploy.training.checkpoints import CHECKPOINT_DIR, LATEST_FILE

TIMING_KEYS = {"items_per_s", "pairs_per_s", "tokens_per_s", "sample_time_frac"}


def train(method: str, out, data, *extra: str) -> list[dict]:
    args = ["train", method, f"data={data}", f"output_dir={out}", "progress=false", *extra]
    assert main(args) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def assert_same_weights(a, b) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-7, msg=k)


SFT = ["batch_size=4", "lr_scheduler=cosine", "warmup_steps=1"]
GDSO = [
    "batch_size=2",
    "group_size=2",
    "max_new_tokens=4",
    "inner_updates=2",
    "beta=0.04",
    "steps_per_iteration=3",
    "lr_scheduler=cosine",
]


@pytest.mark.parametrize(("method", "extra"), [("sft", SFT), ("gdso", GDSO)])
def test_resumed_run_matches_uninterrupted(method, extra, small_data, tmp_path, one_thread):
    full = tmp_path / "full"
    rows = train(method, full, small_data, "max_steps=4", "save_every=2", "keep_checkpoints=3", *extra)
    step2 = full / CHECKPOINT_DIR / "step_00000002"
    assert (step2 / "trainer_state.json").is_file() and (step2 / "model" / "model.safetensors").is_file()
    if method == "gdso":
        assert (step2 / "ref_model" / "model.safetensors").is_file()

    resumed = tmp_path / "resumed"
    again = train(method, resumed, small_data, "max_steps=4", f"resume={step2}", *extra)
    assert [r["step"] for r in again] == [3, 4]
    assert again == rows[2:]  # identical losses, rewards, KL, grad norms, learning rates
    assert_same_weights(full / "model", resumed / "model")


def test_resume_without_reference_state_would_differ(small_data, tmp_path, one_thread):
    """Negative control for the GDSO case: dropping the saved π_ref changes the resumed steps."""
    import shutil

    full = tmp_path / "full"
    rows = train("gdso", full, small_data, "max_steps=4", "save_every=2", "keep_checkpoints=3", *GDSO)
    step2 = full / CHECKPOINT_DIR / "step_00000002"
    # a checkpoint whose reference policy is the step-2 policy instead of the step-0 one
    shutil.rmtree(step2 / "ref_model")
    shutil.copytree(step2 / "model", step2 / "ref_model")
    again = train("gdso", tmp_path / "resumed", small_data, "max_steps=4", f"resume={step2}", *GDSO)
    assert again[0]["kl_last"] != pytest.approx(rows[2]["kl_last"], rel=1e-3)


def test_auto_resume_continues_in_place(small_data, tmp_path, one_thread):
    """``resume=auto`` (the default) picks up the latest checkpoint of output_dir; the metrics log of the
    continued run reads like one uninterrupted run, and a half-written checkpoint is ignored."""
    straight = train("sft", tmp_path / "straight", small_data, "max_steps=3", "batch_size=4", "resume=never")
    out = tmp_path / "interrupted"
    train("sft", out, small_data, "max_steps=2", "batch_size=4", "resume=never")
    (out / CHECKPOINT_DIR / ".tmp_step_00000003").mkdir()  # what a crash during a save leaves behind
    assert (out / CHECKPOINT_DIR / LATEST_FILE).read_text().strip() == "step_00000002"
    continued = train("sft", out, small_data, "max_steps=3", "batch_size=4")
    assert continued == straight
    assert_same_weights(tmp_path / "straight" / "model", out / "model")
