"""Fixtures of the trainer tests: a small synthetic dataset, a saved untrained teacher, and a
single-thread scope (the golden values are pinned for one intra-op thread)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """6 prompts × 3 images of 32 px (12 train, 3 val, 3 test records), seed 0: small enough that two
    trainer steps take about a second on the tiny preset. The flat scene style, pinned: the trainers'
    golden losses were recorded on it, and the default style (natural) draws other images."""
    from zreward_deploy.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("small_synth")
    generate_dataset(root, SynthConfig(prompts=6, images_per_prompt=3, image_size=32, seed=0, style="flat"))
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


def redraw_weights(model, seed: int) -> None:
    """Redraw every parameter of ``model`` (a ZRewardModel) in place from ``seed`` and its name in the
    weights file alone: biases 0, other vectors (norm scales) 1, everything else N(0, 0.02²), each from
    its own generator.

    A preset's own weights depend on the order in which transformers initialises the modules, which
    transformers 5 changed (the same seed gives other weights there); these do not. File names, not
    module names: transformers 5 also renamed the vision tower's modules (modeling.weights_for_file).
    """
    from zreward_deploy.generation import derive_seed
    from zreward_deploy.modeling import weights_for_file

    with torch.no_grad():
        for name, param in sorted(weights_for_file(model, dict(model.named_parameters())).items()):
            if name.endswith(".bias"):
                param.zero_()
            elif param.ndim == 1:
                param.fill_(1.0)
            else:
                generator = torch.Generator().manual_seed(derive_seed(seed, name))
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


@pytest.fixture(scope="session")
def golden_models(tmp_path_factory):
    """``(student_dir, teacher_dir)``: the tiny preset with :func:`redraw_weights` weights (seeds 0 and
    1), saved. The golden-value tests start from these, so their values hold on transformers 4.57 and 5
    alike: given the same weights, every trainer computes the same numbers on both."""
    from zreward_deploy.presets import build_preset

    dirs = []
    for seed, name in ((0, "student"), (1, "teacher")):
        model, processor = build_preset("tiny", seed=seed)
        redraw_weights(model, seed)
        path = tmp_path_factory.mktemp(f"golden_{name}")
        model.save_pretrained(path)
        processor.save_pretrained(path)
        dirs.append(path)
    return tuple(dirs)


@pytest.fixture
def one_thread():
    """Run the test with one intra-op thread (so reductions have one order), then restore the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
