"""The tiny generator (zreward_deploy/refl/generator.py): the "VAE" is exact, pretraining is cached under
its config hash and reused, and a damaged cache folder is refused, never loaded."""

import json

import pytest
import torch

import zreward_deploy.refl.generator as generator
from zreward_deploy.errors import InvalidModelError, ZRewardInputError
from zreward_deploy.refl.generator import (
    PretrainConfig,
    TinyGeneratorConfig,
    build_generator,
    cache_key,
    load_generator,
    pretrain_generator,
)

TINY = TinyGeneratorConfig(
    image_size=16, block_out_channels=(16, 16), attention_levels=1, text_dim=16, max_prompt_tokens=8
)
QUICK = PretrainConfig(steps=2, batch_size=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from zreward_deploy.data.synth import SynthConfig, generate_dataset

    out = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(
        out, SynthConfig(prompts=4, images_per_prompt=2, image_size=16, val_fraction=0, test_fraction=0)
    )
    return out


def test_decode_inverts_encode():
    gen = build_generator(TINY)
    images = torch.rand(2, 3, 16, 16)
    latents = gen.encode_images(images)
    assert latents.shape == (2, *TINY.latent_shape) == (2, 12, 8, 8)
    torch.testing.assert_close(gen.decode(latents), images)


def test_config_refuses_sizes_the_unet_cannot_halve():
    with pytest.raises(ZRewardInputError, match="image_size"):
        TinyGeneratorConfig(image_size=18, block_out_channels=(16, 16))


def test_pretraining_is_cached_and_reused(data, tmp_path, monkeypatch):
    gen, folder, cached = pretrain_generator(data, tmp_path, TINY, QUICK, progress=False)
    assert not cached and folder.parent == tmp_path
    assert folder.name == cache_key(TINY, QUICK, generator.dataset_fingerprint(data))
    record = json.loads((folder / "generator.json").read_text())
    assert record["pretrain_wall_s"] >= 0 and len(record["loss_curve"]) == 2
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary folder was renamed into place

    def no_training(*args, **kwargs):
        raise AssertionError("the cached generator was trained again")

    monkeypatch.setattr(generator, "_train", no_training)
    again, folder2, cached2 = pretrain_generator(data, tmp_path, TINY, QUICK, progress=False)
    assert cached2 and folder2 == folder
    for a, b in zip(gen.unet.parameters(), again.unet.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    # another budget is another key: never the cached one
    other = PretrainConfig(steps=3, batch_size=4)
    assert cache_key(TINY, other, "x") != cache_key(TINY, QUICK, "x")
    prompts = ["two red circles", "a blue square on the left"]
    torch.testing.assert_close(gen.generate(prompts, seed=4), again.generate(prompts, seed=4))


def test_a_damaged_cache_is_refused(data, tmp_path):
    _, folder, _ = pretrain_generator(data, tmp_path, TINY, QUICK, progress=False)
    weights = folder / "unet.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(InvalidModelError, match=r"unet\.safetensors.*SHA-256"):
        pretrain_generator(data, tmp_path, TINY, QUICK, progress=False)
    weights.unlink()
    with pytest.raises(InvalidModelError, match=r"unet\.safetensors.*missing"):
        load_generator(folder)
    (folder / "generator.json").write_text("{not json")
    with pytest.raises(InvalidModelError, match=r"generator\.json"):
        load_generator(folder)
