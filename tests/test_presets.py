"""Building models: presets, compose from component checkpoints, safetensors save/load."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from zreward_deploy.errors import InvalidModelError
from zreward_deploy.modeling import ZRewardModel
from zreward_deploy.presets import build_preset, compose
from zreward_deploy.processing import ZRewardProcessor
from zreward_deploy.scoring import Scorer
from zreward_deploy.tokenization import build_tokenizer


def _inputs(processor, n=2):
    ids, mask = processor.encode_prompts(["two red cubes", "a star on a table"][:n])
    return (
        processor.preprocess_tensor(torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))),
        ids,
        mask,
    )


@pytest.mark.parametrize("text_model_type", ["qwen2", "qwen3", "llama"])
def test_save_load_round_trip(text_model_type, tmp_path):
    model, processor = build_preset("tiny", text_model_type=text_model_type, seed=4)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    loaded = ZRewardModel.from_pretrained(tmp_path)
    loaded_processor = ZRewardProcessor.from_pretrained(tmp_path)
    pv, ids, mask = _inputs(processor)
    suffixes = processor.suffix_ids(["realism", "alignment"])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(pv, ids, mask, suffixes).probs, model(pv, ids, mask, suffixes).probs
        )
    assert loaded.config.text_config.model_type == text_model_type
    assert loaded_processor.score_token_ids == processor.score_token_ids


def test_presets_are_a_function_of_the_seed():
    a, _ = build_preset("tiny", seed=11)
    b, _ = build_preset("tiny", seed=11)
    c, _ = build_preset("tiny", seed=12)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_bench_small_sizes():
    model, processor = build_preset("bench-small")
    c = model.config
    assert (
        c.num_image_tokens == 196
        and c.text_config.hidden_size == 512
        and c.text_config.num_hidden_layers == 8
    )
    pv = processor.preprocess_tensor(torch.rand(1, 3, 64, 64))
    ids, mask = processor.encode_prompts(["a star"])
    with torch.no_grad():
        out = model(pv, ids, mask, processor.suffix_ids(c.get_rubric().names))
    assert out.probs.shape == (1, 4, 5)


def test_unknown_preset():
    with pytest.raises(InvalidModelError, match="unknown preset"):
        build_preset("huge")
    with pytest.raises(InvalidModelError, match="mamba"):
        build_preset("tiny", text_model_type="mamba")


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    """Tiny SigLIP (vision-only and dual-encoder), CLIP vision and tied-embedding Qwen2 checkpoints."""
    root = tmp_path_factory.mktemp("components")
    tokenizer = build_tokenizer()
    vision_kw = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 24,
        "intermediate_size": 48,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(**vision_kw)).save_pretrained(root / "siglip_vision")
    (root / "siglip_vision" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.4]})
    )
    SiglipModel(
        SiglipConfig(
            vision_config=vision_kw,
            text_config={
                "hidden_size": 24,
                "intermediate_size": 48,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "vocab_size": 100,
            },
        )
    ).save_pretrained(root / "siglip_full")
    CLIPVisionModel(CLIPVisionConfig(**vision_kw)).save_pretrained(root / "clip_vision")
    lm = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    )
    lm.save_pretrained(root / "qwen2")
    tokenizer.save_pretrained(root / "qwen2")
    return root


@pytest.mark.parametrize("vision", ["siglip_vision", "siglip_full", "clip_vision"])
def test_compose_takes_the_component_weights(components, vision, tmp_path):
    model, processor = compose(components / vision, components / "qwen2")
    vision_saved = load_file(components / vision / "model.safetensors")
    lm_saved = load_file(components / "qwen2" / "model.safetensors")
    # transformers 5 dropped the towers' `vision_model.` module prefix (its files may still carry it)
    tower = {k.removeprefix("vision_model."): v for k, v in model.vision_tower.state_dict().items()}
    vision_keys = [k for k in vision_saved if not k.startswith(("text_model.", "logit_"))]
    assert len(vision_keys) == len(tower)
    for key in vision_keys:
        torch.testing.assert_close(tower[key.removeprefix("vision_model.")], vision_saved[key])
    lm = model.language_model.state_dict()
    for key, value in lm_saved.items():
        torch.testing.assert_close(lm[key], value)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    if vision == "siglip_vision":
        assert model.config.image_mean == [0.4, 0.5, 0.6]
    if vision == "clip_vision":
        assert model.config.num_image_tokens == 16 and model.config.vision_feature_select == "patch"

    # the composed model runs, saves as safetensors and reloads to the same outputs
    pv, ids, mask = _inputs(processor)
    suffixes = processor.suffix_ids(["realism", "alignment", "aesthetics"])
    with torch.no_grad():
        before = model(pv, ids, mask, suffixes).probs
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    scorer = Scorer.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(scorer.model(pv, ids, mask, suffixes).probs, before)
    assert scorer.model.get_output_embeddings().weight is scorer.model.get_input_embeddings().weight


def test_compose_refuses_pickle_components(components, tmp_path):
    lm = Qwen2ForCausalLM.from_pretrained(components / "qwen2")
    # written by hand: transformers 5 dropped save_pretrained(safe_serialization=False)
    lm.config.save_pretrained(tmp_path / "pickled")
    torch.save(lm.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    build_tokenizer().save_pretrained(tmp_path / "pickled")
    assert not list((tmp_path / "pickled").glob("*.safetensors"))
    with pytest.raises(InvalidModelError, match="cannot load component weights"):
        compose(components / "siglip_vision", tmp_path / "pickled")


def test_compose_refuses_wrong_component_types(components):
    with pytest.raises(InvalidModelError, match="not a SigLIP/CLIP"):
        compose(components / "qwen2", components / "qwen2")
    with pytest.raises(InvalidModelError, match="not one of"):
        compose(components / "siglip_vision", components / "siglip_vision")
