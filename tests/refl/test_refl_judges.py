"""The independent judges (zreward_deploy/refl/judges.py, evaluate.py): the image statistics respond to
the synthetic set's blur, noise and pixelation as their docstrings claim, the net win rate counts as the
paper does, and the reward-hacking verdict says which judges disagree."""

import inspect

import numpy as np
import pytest
import torch

from zreward_deploy.data.synth import draw_prompt, render_image
from zreward_deploy.errors import ZRewardInputError
from zreward_deploy.refl.evaluate import hacking_verdict, held_out_prompts, pixel_change, saturated_fraction
from zreward_deploy.refl.judges import (
    blockiness,
    net_win_rate,
    noise_level,
    sharpness,
    statistics_votes,
)

SEVERITIES = (0.0, 0.5, 1.0)
# the flat style, which zreward refl pins (the synthetic set's default became "natural")
FLAT = {"style": "flat"} if "style" in inspect.signature(render_image).parameters else {}


def scenes(defect, severity, n=6):
    """n flat-style scenes (the style the generator is trained on) with one defect, as [n, 3, 64, 64]."""
    out = []
    for i in range(n):
        spec = draw_prompt(np.random.default_rng([11, i]))
        defects = {defect: severity} if severity else {}
        image = render_image(spec.objects, defects, 64, np.random.default_rng([12, i]), **FLAT)
        out.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


@pytest.fixture(scope="module")
def rendered():
    return {(d, s): scenes(d, s) for d in ("blur", "noise", "pixelate") for s in SEVERITIES}


def means(rendered, defect, fn):
    return [float(fn(rendered[(defect, s)]).mean()) for s in SEVERITIES]


def test_sharpness_falls_with_blur(rendered):
    clean, half, full = means(rendered, "blur", sharpness)
    assert clean > half > full
    assert full < 0.5 * clean


def test_sharpness_is_not_raised_by_noise(rendered):
    # noise in flat regions must not read as detail (the median and the edge mask); it may lower S
    clean, half, full = means(rendered, "noise", sharpness)
    assert half <= clean and full <= clean


def test_noise_level_rises_with_noise_and_reads_sigma(rendered):
    clean, half, full = means(rendered, "noise", noise_level)
    assert clean < 1.0 < half < full  # flat scenes: no noise at all
    # i.i.d. Gaussian noise of σ = 20/255 per channel on a mid-grey image: the luminance's noise is
    # σ · |(0.299, 0.587, 0.114)| = 20 · 0.6686 in 0-255 units
    grey = 0.5 + torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 20 / 255
    assert float(noise_level(grey).mean()) == pytest.approx(20 * 0.6686, rel=0.08)


def test_blockiness_rises_with_pixelation_not_with_blur(rendered):
    clean, half, full = means(rendered, "pixelate", blockiness)
    assert clean < half <= full + 0.02
    assert half > clean + 0.2
    blurred = means(rendered, "blur", blockiness)
    assert max(blurred) < half  # blur does not read as pixelation
    assert float(blockiness(torch.full((1, 3, 16, 16), 0.3))) == 0.0  # no edges at all


def test_statistics_refuse_other_shapes():
    with pytest.raises(ZRewardInputError, match=r"\[B, 3, H, W\]"):
        sharpness(torch.rand(3, 16, 16))


def test_net_win_rate_by_hand():
    a, b = [3.0, 2.0, 5.0, 1.0, 4.0], [1.0, 2.0, 4.0, 2.0, 4.5]
    result = net_win_rate(a, b)
    assert (result.wins, result.losses, result.ties, result.pairs) == (2, 2, 1, 5)
    assert result.net == 0.0
    lower = net_win_rate(a, b, higher_is_better=False)
    assert (lower.wins, lower.losses) == (2, 2)
    assert net_win_rate([2.0, 3.0], [1.0, 1.0]).net == 1.0
    assert net_win_rate([2.0, 3.0, 1.0], [1.0, 1.0, 1.0005], tol=0.001).to_dict()["ties"] == 1
    with pytest.raises(ZRewardInputError, match="equal-length"):
        net_win_rate([1.0], [1.0, 2.0])
    with pytest.raises(ZRewardInputError, match="NaN"):
        net_win_rate([float("nan")], [1.0])


def test_statistics_vote_is_the_majority():
    # pair 0: sharper, less noisy, blockier -> 2 of 3 better: a win; pair 1: all worse: a loss;
    # pair 2: sharper, noisier, equal blockiness -> 1 - 1 + 0: a tie; pair 3: every difference below the
    # statistic's tolerance (0.01, 2.0, 0.07) -> a tie
    a = {
        "sharpness": torch.tensor([0.6, 0.1, 0.6, 0.505]),
        "noise": torch.tensor([1.0, 9.0, 9.0, 1.0]),
        "blockiness": torch.tensor([0.9, 0.9, 0.5, 0.45]),
    }
    b = {
        "sharpness": torch.tensor([0.5, 0.2, 0.5, 0.5]),
        "noise": torch.tensor([4.0, 1.0, 4.0, 2.5]),
        "blockiness": torch.tensor([0.5, 0.5, 0.5, 0.5]),
    }
    assert statistics_votes(a, b).tolist() == [1, -1, 0, 0]


def test_hacking_verdict_names_the_disagreeing_judges():
    def judges(reward, student, stats):
        return {
            "reward": {"run": True, "net": reward},
            "student": {"run": True, "net": student},
            "statistics": {"run": True, "net": stats},
        }

    assert hacking_verdict(judges(0.5, -0.1, 0.0)).startswith("REWARD HACKING")
    partly = hacking_verdict(judges(0.5, 0.2, -0.3))
    assert partly.startswith("partly") and "statistics -0.300" in partly
    assert hacking_verdict(judges(0.5, 0.2, 0.3)).startswith("no sign of reward hacking")
    assert "did not raise the reward" in hacking_verdict(judges(-0.1, 0.2, 0.3))
    # every judge agrees, but the images did not visibly change: still called out
    invisible = hacking_verdict(judges(0.5, 0.2, 0.3), {"median_psnr_db": 45.0, "mean_abs_255": 0.8})
    assert "BUT the images barely changed" in invisible
    visible = hacking_verdict(judges(0.5, 0.2, 0.3), {"median_psnr_db": 30.0, "mean_abs_255": 4.0})
    assert "BUT" not in visible


def test_pixel_change_by_hand():
    before = torch.zeros(2, 3, 4, 4)
    after = before + 1 / 255  # one grey level everywhere: MSE 1, PSNR 20 log10(255) = 48.13 dB
    change = pixel_change(after, before)
    assert change["mean_abs_255"] == pytest.approx(1.0, rel=1e-4)
    assert change["median_psnr_db"] == pytest.approx(48.1308, abs=1e-3)
    # one red pixel (saturation 1) of 16 in an otherwise grey image (saturation 0)
    grey = torch.full((1, 3, 4, 4), 0.5)
    grey[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    assert float(saturated_fraction(grey)) == 1 / 16


def test_held_out_prompts_avoid_the_training_prompts():
    seen = set(held_out_prompts(30, set(), seed=0))
    fresh = held_out_prompts(20, seen, seed=1)
    assert len(set(fresh)) == 20 and not seen & set(fresh)
    with pytest.raises(ZRewardInputError, match="ask fewer"):
        held_out_prompts(481, set(), seed=0)  # the grammar has 480
