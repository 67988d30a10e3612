"""The package's public surface: what a user imports comes from the top level, every name in __all__
resolves, and importing the package stays light (no torch until a name that needs it is used)."""

import subprocess
import sys

import zreward_deploy


def test_every_public_name_resolves_to_its_definition():
    import zreward_deploy.errors as errors
    import zreward_deploy.scoring as scoring

    assert zreward_deploy.Scorer is scoring.Scorer
    assert zreward_deploy.load_scorer is scoring.load_scorer
    assert zreward_deploy.ZRewardInputError is errors.ZRewardInputError
    for name in zreward_deploy.__all__:
        value = getattr(zreward_deploy, name)
        assert value.__name__ == name and value.__module__.startswith("zreward_deploy."), name


def test_unknown_names_raise_attribute_error():
    try:
        zreward_deploy.NotAThing  # noqa: B018
    except AttributeError as exc:
        assert "NotAThing" in str(exc)
    else:
        raise AssertionError("zreward_deploy.NotAThing did not raise AttributeError")


def test_import_is_light():
    code = "import sys, zreward_deploy; zreward_deploy.ZRewardInputError; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_all_lists_exactly_the_lazy_exports():
    assert zreward_deploy.__all__ == sorted(zreward_deploy._EXPORTS)


def test_forward_batch_is_what_score_runs(tiny, tmp_path):
    # the public timing point of the benchmarks gives the numbers score() gives on the same inputs
    import numpy as np
    import torch
    from PIL import Image

    from zreward_deploy import Scorer

    model, processor = tiny
    scorer = Scorer(model, processor)
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    result = scorer.score([str(path)], "two red cubes", dimensions=["realism", "alignment"])
    pixel_values = processor.pixel_values([processor.model_image(str(path))])
    input_ids, attention_mask = processor.pad([processor.prompt_ids("two red cubes")])
    with torch.no_grad():
        probs, mean, std = scorer.forward_batch(
            pixel_values, input_ids, attention_mask, ["realism", "alignment"]
        )
    torch.testing.assert_close(probs, result.probs)
    torch.testing.assert_close(mean, result.mean)
    torch.testing.assert_close(std, result.std)
