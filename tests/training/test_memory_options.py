"""TrainConfig's options for real model sizes (training/loop.py ``apply_memory_options``): a frozen vision
tower stays bit-identical while the rest trains; gradient checkpointing changes memory, not the result."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from zreward_deploy.cli import main
from zreward_deploy.modeling import weights_for_file
from zreward_deploy.presets import build_preset

COMMON = [
    "train",
    "sft",
    "resume=never",
    "progress=false",
    "batch_size=4",
    "max_steps=2",
    "learning_rate=1e-2",
]


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_frozen_vision_tower_is_left_exactly_as_it_was(small_data, tmp_path, one_thread):
    assert main([*COMMON, f"data={small_data}", f"output_dir={tmp_path}", "freeze_vision=true"]) == 0
    trained = load_file(tmp_path / "model" / "model.safetensors")
    preset = build_preset("tiny", seed=0)[0]
    start = weights_for_file(preset, preset.state_dict())
    tower = [k for k in trained if k.startswith("vision_tower.")]
    rest = [k for k in trained if not k.startswith("vision_tower.")]
    assert tower and rest
    assert all(torch.equal(trained[k], start[k]) for k in tower)
    assert any(not torch.equal(trained[k], start[k]) for k in rest if k in start)  # the rest trained


def test_gradient_checkpointing_gives_the_same_training(small_data, tmp_path, one_thread):
    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        assert (
            main([*COMMON, f"data={small_data}", f"output_dir={out}", f"gradient_checkpointing={flag}"]) == 0
        )
        runs[flag] = (_rows(out), load_file(out / "model" / "model.safetensors"))
    (plain_rows, plain_w), (ckpt_rows, ckpt_w) = runs["false"], runs["true"]
    for a, b in zip(plain_rows, ckpt_rows, strict=True):
        assert (
            abs(a["loss"] - b["loss"]) <= 1e-6
            and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * a["grad_norm"]
        )
    for k in plain_w:
        torch.testing.assert_close(ckpt_w[k], plain_w[k], rtol=1e-5, atol=1e-6, msg=k)


def test_the_options_reach_the_model():
    from zreward_deploy.training.loop import apply_memory_options
    from zreward_deploy.training.sft import SFTConfig

    model = build_preset("tiny", seed=0)[0]
    apply_memory_options(model, SFTConfig(data="unused", freeze_vision=True, gradient_checkpointing=True))
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("vision_tower."))
    checkpointed = [n for n, m in model.named_modules() if getattr(m, "gradient_checkpointing", False)]
    assert any(n.startswith("language_model") for n in checkpointed)
    assert any(n.startswith("vision_tower") for n in checkpointed)
