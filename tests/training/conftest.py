"""Fixtures of the trainer tests: a small synthetic dataset, a saved untrained teacher, and a
single-thread scope (the golden values are pinned for one intra-op thread)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """6 prompts × 3 images of 32 px (12 train, 3 val, 3 test records), seed 0: small enough that two
    trainer steps take about a second on the tiny preset."""
    from zreward_deploy.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("small_synth")
    generate_dataset(root, SynthConfig(prompts=6, images_per_prompt=3, image_size=32, seed=0))
    return root


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    """An untrained tiny preset (seed 1) saved as a model directory: a teacher for RISD and OPD tests
    (an untrained teacher's distributions are still distributions to distil)."""
    from zreward_deploy.presets import build_preset

    model, processor = build_preset("tiny", seed=1)
    path = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture
def one_thread():
    """Run the test with one intra-op thread (so reductions have one order), then restore the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
