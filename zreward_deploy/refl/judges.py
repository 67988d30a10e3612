"""Judges of generated images that the reward never saw, and the net win rate.

Image statistics that measure the synthetic set's defects directly (``zreward_deploy/data/synth.py``:
Gaussian blur, Gaussian pixel noise, block pixelation), on the luminance Y = 0.299 R + 0.587 G + 0.114 B
in [0, 255] of ``[B, 3, H, W]`` images in [0, 1]:

* :func:`noise_level` (lower is better): Donoho's robust noise estimate, the median absolute value of
  the finest diagonal Haar wavelet coefficients ``(a - b - c + d) / 2`` of each 2 x 2 cell, over 0.6745
  (the MAD of a standard normal). Flat regions give 0, edges are a minority that the median ignores, and
  i.i.d. Gaussian noise of σ gives σ (the transform is orthonormal).
* :func:`sharpness` (higher is better): the re-blur measure of Crété-Roffet et al. (2007) on a 3 x 3
  median-filtered Y, at the edges: ``S = Σ max(0, D - D_b) / Σ D`` over the horizontal and vertical
  neighbour differences D of the image and D_b of its 1 x 5 box-blurred copy, summed over the pairs
  where a 5 x 5 box-smoothed copy has its 10 % strongest gradients (the scene's edges). A sharp edge
  loses much of its step when blurred again (S near 1), an already blurred one little (S near 0). The
  median and the edge mask keep noise in flat regions from reading as detail (on the synthetic scenes,
  noise lowers S a little; measured: tests/refl/test_refl_judges.py).
* :func:`blockiness` (lower is better): how axis-aligned the strong edges are. Pixelation turns every
  edge into a staircase of horizontal and vertical steps, so at a pixel with a strong edge one of the two
  forward differences gx, gy is ~0; along a smooth diagonal or curved edge both are large. With
  r = min(|gx|, |gy|) / max(|gx|, |gy|) over the pixels whose gradient is in the top 10 % of the image,
  ``blockiness = 1 - 2 mean(r)``, clipped to [0, 1] (a square's or the table's edges are axis-aligned
  in a clean scene too: the level of a clean image is not 0; what is measured is the rise).

:func:`net_win_rate` is the paper's measure: (wins - losses) / pairs, ties counting in the pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..errors import ZRewardInputError

# statistic -> True when higher is better
STATISTICS: dict[str, bool] = {"sharpness": True, "noise": False, "blockiness": False}
# statistic -> the smallest difference that counts as a win or a loss (smaller ones are ties): a quarter
# of what the defect the statistic measures changes it at severity 0.25 on the flat synthetic scenes
# (sharpness -0.04 for blur, noise +7.9 for noise, blockiness +0.28 for pixelation; measured on 24
# scenes, 64 px). Differences below these are within what the statistics move between clean scenes.
TOLERANCES: dict[str, float] = {"sharpness": 0.01, "noise": 2.0, "blockiness": 0.07}


def luminance(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] -> ``[B, 1, H, W]`` luminance in [0, 255] (fp32)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ZRewardInputError("images", f"expected [B, 3, H, W], got shape {tuple(images.shape)}")
    w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() * w).sum(1, keepdim=True) * 255.0


def noise_level(images: torch.Tensor) -> torch.Tensor:
    """``[B]`` noise σ estimate in 0-255 units (module docstring)."""
    y = luminance(images)
    h, w = (y.shape[2] // 2) * 2, (y.shape[3] // 2) * 2
    y = y[:, :, :h, :w]
    a, b = y[:, :, 0::2, 0::2], y[:, :, 0::2, 1::2]
    c, d = y[:, :, 1::2, 0::2], y[:, :, 1::2, 1::2]
    hh = (a - b - c + d) / 2
    return hh.abs().flatten(1).median(dim=1).values / 0.6745


def median3(y: torch.Tensor) -> torch.Tensor:
    """3 x 3 median filter of ``[B, 1, H, W]`` (replicate padding)."""
    patches = F.unfold(F.pad(y, (1, 1, 1, 1), mode="replicate"), 3)  # [B, 9, H*W]
    return patches.median(dim=1).values.view_as(y)


def sharpness(images: torch.Tensor, top: float = 0.10) -> torch.Tensor:
    """``[B]`` re-blur sharpness in [0, 1] at the image's edges (module docstring); ``top``: fraction of
    the neighbour pairs, by the gradient of a 5 x 5 box-smoothed copy, that count as edges."""
    y = median3(luminance(images))
    smooth = F.avg_pool2d(F.pad(y, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    num = torch.zeros(y.shape[0], device=y.device)
    den = torch.zeros_like(num)
    for dim, kernel in ((3, (1, 5)), (2, (5, 1))):
        pad = (2, 2, 0, 0) if dim == 3 else (0, 0, 2, 2)
        blurred = F.avg_pool2d(F.pad(y, pad, mode="replicate"), kernel, stride=1)
        d = y.diff(dim=dim).abs().flatten(1)
        db = blurred.diff(dim=dim).abs().flatten(1)
        g = smooth.diff(dim=dim).abs().flatten(1)
        k = max(1, int(top * g.shape[1]))
        edge = (g >= g.topk(k, dim=1).values[:, -1:]) & (g > 1.0)
        num += ((d - db).clamp(min=0) * edge).sum(1)
        den += (d * edge).sum(1)
    return torch.where(den > 0, num / den.clamp(min=1e-6), torch.zeros_like(num))


def blockiness(images: torch.Tensor, top: float = 0.10) -> torch.Tensor:
    """``[B]`` staircase measure in [0, 1] (module docstring); ``top``: fraction of pixels kept as edges."""
    y = luminance(images)
    gx = (y[:, :, :-1, 1:] - y[:, :, :-1, :-1]).abs().flatten(1)
    gy = (y[:, :, 1:, :-1] - y[:, :, :-1, :-1]).abs().flatten(1)
    mag = torch.maximum(gx, gy)
    k = max(1, int(top * mag.shape[1]))
    thresh = mag.topk(k, dim=1).values[:, -1:]
    edge = (mag >= thresh) & (mag > 1.0)  # a flat image has no edges: blockiness 0
    ratio = torch.minimum(gx, gy) / mag.clamp(min=1e-6)
    mean = (ratio * edge).sum(1) / edge.sum(1).clamp(min=1)
    value = (1 - 2 * mean).clamp(0, 1)
    return torch.where(edge.any(1), value, torch.zeros_like(value))


def image_statistics(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{statistic: [B]}`` for every statistic of :data:`STATISTICS` (CPU tensors)."""
    with torch.no_grad():
        x = images.detach()
        return {
            "sharpness": sharpness(x).cpu(),
            "noise": noise_level(x).cpu(),
            "blockiness": blockiness(x).cpu(),
        }


@dataclass(frozen=True)
class NetWin:
    """Paired comparison of A (the fine-tuned generator) against B (the pretrained one)."""

    wins: int
    losses: int
    ties: int

    @property
    def pairs(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def net(self) -> float:
        """(wins - losses) / pairs, in [-1, 1]."""
        return (self.wins - self.losses) / self.pairs if self.pairs else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "pairs": self.pairs, "net": self.net}


def compare(
    a: Sequence[float] | torch.Tensor,
    b: Sequence[float] | torch.Tensor,
    higher_is_better: bool = True,
    tol: float = 0.0,
) -> torch.Tensor:
    """Per pair: +1 where A is better than B by more than ``tol``, -1 where worse, 0 otherwise."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ZRewardInputError(
            "scores", f"need two equal-length 1-D score lists, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ZRewardInputError("scores", "NaN or infinite score in a paired comparison")
    d = (a - b) if higher_is_better else (b - a)
    return (d > tol).long() - (d < -tol).long()


def net_win_rate(
    a: Sequence[float] | torch.Tensor,
    b: Sequence[float] | torch.Tensor,
    higher_is_better: bool = True,
    tol: float = 0.0,
) -> NetWin:
    """Wins, losses and ties of A over B on paired scores ``a[i]`` vs ``b[i]``."""
    return net_win_from_votes(compare(a, b, higher_is_better, tol))


def net_win_from_votes(votes: torch.Tensor) -> NetWin:
    """:class:`NetWin` from per-pair votes in {-1, 0, +1}."""
    return NetWin(int((votes > 0).sum()), int((votes < 0).sum()), int((votes == 0).sum()))


def statistics_votes(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The image-statistics judge's vote per pair: the majority of the three statistics' preferences,
    each with its :data:`TOLERANCES` (a statistic that ties abstains; an even split is a tie)."""
    total = sum(compare(a[name], b[name], better, TOLERANCES[name]) for name, better in STATISTICS.items())
    return torch.sign(total).long()
