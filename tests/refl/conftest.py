"""Tiny parts for the reward fine-tuning tests: a pixel-space diffusers UNet on 8 x 8 images, its DDIM
scheduler, a prompt encoder, and a scorer of the ``tiny`` preset of its own (the tests freeze and
cast it, which the session's shared ``tiny`` model must not see)."""

import pytest

pytest.importorskip("diffusers", reason="the refl extra (diffusers) is not installed")

from .helpers import PromptTable, make_unet


@pytest.fixture
def unet():
    return make_unet()


@pytest.fixture
def encode():
    return PromptTable()


@pytest.fixture(scope="module")
def scorer():
    """A Scorer of the ``tiny`` preset (untrained: its realism score is a smooth function of the pixels)."""
    from zreward_deploy.presets import build_preset
    from zreward_deploy.scoring import Scorer

    model, processor = build_preset("tiny", seed=0)
    return Scorer(model, processor)
