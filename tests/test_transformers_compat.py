"""The package on transformers 4.57 and 5: what changed between the two lines, and how a model folder
stays the same on both (docs/design.md §5.1). Every test runs, and must pass, on either line.

* transformers 5 builds a model on the meta device inside ``from_pretrained`` and gives non-persistent
  buffers uninitialised storage, expecting ``_init_weights`` to refill them; the score head's token ids
  and values are such buffers (``ZRewardPreTrainedModel._init_weights`` refills them).
* transformers 5 removed the ``vision_model`` wrapper of the SigLIP/CLIP vision towers, so module
  names differ; files keep the 4.57 names (``modeling.weights_for_file``/``weights_from_file``).
* transformers 5 writes ``tokenizer_config.json`` and the text config's RoPE settings in forms 4.57 does
  not read (``processing.portable_tokenizer_config``, ``config.portable_rope_fields``).
* transformers 5 loads weights in the dtype a checkpoint records unless told otherwise, 4.57 in float32
  (``modeling.load_dtype``).
* transformers 5 draws progress bars for every load and save (``modeling.quiet_progress_bars``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from zreward_deploy.cli import main
from zreward_deploy.config import portable_rope_fields
from zreward_deploy.modeling import (
    ZRewardModel,
    quiet_progress_bars,
    save_model_dir,
    weights_for_file,
    weights_from_file,
)
from zreward_deploy.presets import build_preset
from zreward_deploy.processing import ZRewardProcessor, portable_tokenizer_config
from zreward_deploy.scoring import load_scorer

MODELS = [("qwen2", "siglip"), ("qwen3", "clip"), ("llama", "siglip")]


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    path = tmp_path_factory.mktemp("png") / "image.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize(("text", "vision"), MODELS)
def test_saved_preset_scores_a_png_after_loading(text, vision, png, tmp_path):
    # transformers 5 left the score head's buffers uninitialised after from_pretrained: the ids indexed
    # outside lm_head (IndexError in score_head_ref) or, worse, read wrong rows and wrong values
    model, processor = build_preset("tiny", text_model_type=text, vision_model_type=vision, seed=3)
    save_model_dir(model, processor, tmp_path / "model")
    scorer = load_scorer(tmp_path / "model")

    head = scorer.model.score_head
    vocab = scorer.model.get_output_embeddings().weight.shape[0]
    assert head.score_ids.tolist() == scorer.model.config.score_token_ids
    assert all(0 <= i < vocab for i in head.score_ids.tolist())
    assert head.values.tolist() == list(scorer.model.config.get_score_scale().values)

    result = scorer.score([png], ["two red cubes on a table"], dimensions=["realism", "alignment"])
    probs = result.probs
    assert probs.shape == (1, 2, 5) and torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2))
    # the loaded model scores exactly as the one that was saved
    with torch.no_grad():
        pixels = processor.preprocess_images([png])
        ids, mask = processor.encode_prompts(["two red cubes on a table"])
        before = model(pixels, ids, mask, processor.suffix_ids(["realism", "alignment"])).probs
    torch.testing.assert_close(probs, before)


def test_cli_create_then_score_writes_nothing_to_stderr(png, tmp_path, capfd):
    assert main(["model", "create", "--preset", "tiny", "--out", str(tmp_path / "m")]) == 0
    capfd.readouterr()
    assert (
        main(["score", "--model", str(tmp_path / "m"), "--image", str(png), "--prompt", "a", "--json"]) == 0
    )
    out, err = capfd.readouterr()
    assert err == ""  # no progress bar, no warning about the folder's model type
    item = json.loads(out)["items"][0]
    for dimension in item["dimensions"].values():
        assert sum(dimension["probs"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("vision", ["siglip", "clip"])
def test_weight_files_carry_the_same_names_on_both_lines(vision, tmp_path):
    model, _ = build_preset("tiny", vision_model_type=vision)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    tower = {k for k in keys if k.startswith("vision_tower.")}
    assert tower and all(k.startswith("vision_tower.vision_model.") for k in tower)
    assert keys == set(weights_for_file(model, model.state_dict()))

    # the names map back onto the modules exactly (what resuming a training checkpoint relies on)
    weights = weights_from_file(model, load_file(tmp_path / "model.safetensors"))
    fresh, _ = build_preset("tiny", vision_model_type=vision, seed=9)
    missing, unexpected = fresh.load_state_dict(weights, strict=False)
    assert not missing and not unexpected
    assert all(torch.equal(v, weights[k]) for k, v in fresh.state_dict().items())


def test_a_resumed_checkpoint_gets_every_weight(tmp_path):
    from zreward_deploy.training.checkpoints import _load_weights

    model, _ = build_preset("tiny", seed=5)
    model.save_pretrained(tmp_path)
    target, _ = build_preset("tiny", seed=6)
    _load_weights(target, tmp_path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in target.state_dict().items())


def test_saved_tokenizer_config_is_readable_by_both_lines(tmp_path):
    model, processor = build_preset("tiny")
    save_model_dir(model, processor, tmp_path / "m")
    fields = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    assert (
        fields["tokenizer_class"] == "PreTrainedTokenizerFast"
    )  # 5's name, TokenizersBackend, is not 4.57's
    assert not isinstance(fields.get("extra_special_tokens"), list)
    assert fields["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]

    loaded = ZRewardProcessor.from_pretrained(tmp_path / "m")
    text = "<|im_start|>12345 blurry cube</think>"
    assert loaded.tokenizer.encode(text) == processor.tokenizer.encode(text)
    assert loaded.tokenizer.pad_token_id == processor.tokenizer.pad_token_id
    assert loaded.tokenizer.eos_token_id == processor.tokenizer.eos_token_id
    assert loaded.score_token_ids == processor.score_token_ids


def test_portable_tokenizer_config_rewrites_the_transformers_5_form_only(tmp_path):
    written_by_5 = tmp_path / "five.json"
    written_by_5.write_text(
        json.dumps(
            {"tokenizer_class": "TokenizersBackend", "extra_special_tokens": ["<a>"], "pad_token": "<p>"}
        )
    )
    portable_tokenizer_config(written_by_5)
    assert json.loads(written_by_5.read_text()) == {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "additional_special_tokens": ["<a>"],
        "pad_token": "<p>",
    }
    written_by_4 = tmp_path / "four.json"
    text = json.dumps({"tokenizer_class": "Qwen2Tokenizer", "extra_special_tokens": {}})
    written_by_4.write_text(text)
    portable_tokenizer_config(written_by_4)
    assert written_by_4.read_text() == text
    portable_tokenizer_config(tmp_path / "absent.json")  # a folder without one: nothing to do


def test_portable_rope_fields():
    five = {"rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}, "hidden_size": 8}
    assert portable_rope_fields(five) == {**five, "rope_theta": 1e6, "rope_scaling": None}
    linear = {"rope_parameters": {"rope_theta": 1e4, "rope_type": "linear", "factor": 2.0}}
    assert portable_rope_fields(linear)["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    four = {"rope_theta": 1e6, "rope_scaling": None}
    assert portable_rope_fields(four) == four


def _rope_base(text_config) -> float:
    rope = getattr(text_config, "rope_parameters", None)  # transformers 5; 4.57 has rope_theta only
    return float(rope["rope_theta"] if rope else text_config.rope_theta)


def test_saved_config_states_the_rope_base_for_both_lines(tmp_path):
    # 4.57 reads rope_theta only; a folder written under 5 without it would load with base 10000 there
    model, _ = build_preset("tiny", text_model_type="qwen2")
    model.config.text_config = type(model.config.text_config)(
        **{**model.config.text_config.to_dict(), "rope_theta": 1e6, "rope_parameters": None}
    )
    assert _rope_base(model.config.text_config) == 1e6
    model.config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["text_config"]["rope_theta"] == 1e6
    from zreward_deploy.config import load_config

    assert _rope_base(load_config(tmp_path).text_config) == 1e6


def test_quiet_progress_bars_restores_the_setting():
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    with quiet_progress_bars():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled() == before


def test_loading_prints_nothing(tiny_dir, capfd):
    ZRewardModel.from_pretrained(tiny_dir)
    ZRewardProcessor.from_pretrained(tiny_dir)
    assert capfd.readouterr().err == ""


def test_a_bf16_folder_loads_in_float32_unless_a_dtype_is_asked_for(tmp_path):
    # transformers 5 loads in the dtype a checkpoint records (dtype="auto"), 4.57 in float32
    model, processor = build_preset("tiny")
    save_model_dir(model.to(torch.bfloat16), processor, tmp_path / "bf16")
    assert {p.dtype for p in ZRewardModel.from_pretrained(tmp_path / "bf16").parameters()} == {torch.float32}
    assert load_scorer(tmp_path / "bf16").model.dtype == torch.float32
    asked = ZRewardModel.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    assert {p.dtype for p in asked.parameters()} == {torch.bfloat16}
    assert load_scorer(tmp_path / "bf16", dtype=torch.bfloat16).model.dtype == torch.bfloat16


def test_compose_loads_bf16_components_in_float32_unless_asked(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from zreward_deploy.presets import compose
    from zreward_deploy.tokenization import build_tokenizer

    tokenizer = build_tokenizer()
    vision = SiglipVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    SiglipVisionModel(vision).to(torch.bfloat16).save_pretrained(tmp_path / "vision")
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    Qwen2ForCausalLM(text).to(torch.bfloat16).save_pretrained(tmp_path / "language")
    tokenizer.save_pretrained(tmp_path / "language")
    model, _ = compose(tmp_path / "vision", tmp_path / "language")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    model, _ = compose(tmp_path / "vision", tmp_path / "language", torch_dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
