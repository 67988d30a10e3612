"""SFT: cross-entropy on the score token with no reasoning (docs/method.md §5's SFT baseline, docs/design.md §6).

The model answers in the student layout: every dimension in one pass
(:meth:`~zreward_deploy.modeling.ZRewardModel.forward`), each read at its own answer position. The loss
is the soft cross-entropy against ``ScoreScale.soft_target(ŝ)`` (two-hot for a label between two score
values, so its expectation is ŝ), averaged over the labelled (item, dimension) entries of the global
batch; unlabelled entries are masked. The same trainer makes the SFT *student* and the SFT *teacher
baseline* (the paper's "SFT" rows: the teacher-sized model fine-tuned without reasoning); only
``model`` differs.

Judgements without scores (train_split's preference file) add a pairwise term: ``preference_weight`` ×
the Bradley–Terry loss on the student's μ (``StudentConfig``, docs/training.md); a dataset of judgements
only trains on that term alone.

:func:`~.student_loop.run_student_loop` is the loop, shared with RISD (a different target and loss, same
layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from zreward_deploy.errors import ZRewardInputError
from zreward_deploy.modeling import ZRewardOutput

from .config import LABEL_SOURCES, ConfigError, StudentConfig, require_one_of
from .data import PreferenceData, StudentBatch, StudentData, resolve_dimensions
from .losses import soft_cross_entropy_loss
from .models import load_model
from .run import TrainResult, start_run
from .student_loop import run_student_loop


@dataclass
class SFTConfig(StudentConfig):
    """SFT: soft CE on the score token, no reasoning (student layout, all dimensions in one pass), plus
    the pairwise term on judgements where the data has them."""

    method: ClassVar[str] = "sft"

    label_source: str = field(
        default="scores",
        metadata={
            "help": "which human score is the label: 'scores' (the aggregated training label), "
            "'annotations' (trimmed mean of the raw annotations) or 'auto' (annotations where present)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require_one_of("label_source", self.label_source, LABEL_SOURCES)
        if not self.data:
            raise ConfigError("data", "is required (a dataset folder)")


def _sft_loss(out: ZRewardOutput, batch: StudentBatch) -> tuple[torch.Tensor, dict[str, float]]:
    mask = batch.mask.to(out.logprobs.device)
    n = mask.sum()
    ce_sum = soft_cross_entropy_loss(out.logprobs, batch.targets.to(out.logprobs.device), mask) * n
    with torch.no_grad():
        err = (out.mean.detach().cpu() - batch.labels).abs()[batch.mask]
    return ce_sum, {"mae": float(err.mean()) if err.numel() else 0.0}


def train_sft(cfg: SFTConfig) -> TrainResult:
    """Run SFT as configured; returns a :class:`TrainResult` (the model is in ``output_dir/model``)."""
    from zreward_deploy.data import load_preferences, load_split

    run = start_run(cfg)
    if run.already_trained:
        return run.already_trained_result()
    model, processor = load_model(cfg.model, seed=cfg.seed)
    config = processor.config  # the rubric and scale (a native model's HF config has neither)
    scale, rubric = config.get_score_scale(), config.get_rubric()
    records = load_split(cfg.data, cfg.train_split, scale=scale, rubric=rubric)
    judged = []
    if cfg.preference_weight > 0:
        judged = load_preferences(cfg.data, cfg.train_split, scale, rubric, records=records)
    dims = resolve_dimensions(processor, records, cfg.dimensions, judged)
    data = StudentData(records, processor, dims, label_source=cfg.label_source, require_targets=not judged)
    preferences = PreferenceData(judged, data, processor) if judged else None
    if not data.mask.any() and not preferences:
        raise ZRewardInputError(
            "data",
            f"no record has a label on {dims} and no judgement of {cfg.train_split}.preferences.jsonl is on "
            "them; nothing to train",
        )
    return run_student_loop(run, model, processor, data, _sft_loss, loss_name="ce", preferences=preferences)
