"""Evaluation during and after training: the trained model's HPA, margin-HPA, PLCC and SRCC on
``eval_split``, limited to the dimensions it was trained on, scored in one pass (students) or after
reasoning (teachers and the OPD student).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from zreward_deploy.modeling import ZRewardModel
from zreward_deploy.processing import ZRewardProcessor

from .config import TrainConfig
from .run import Run

REPORTED_METRICS = ("hpa", "margin_hpa", "plcc", "srcc")


def evaluate_scorer(scorer: Any, records: Sequence[Any], batch_size: int = 32) -> dict[str, float]:
    """HPA, margin-HPA, PLCC and SRCC (pooled over the labelled dimensions) of a scorer on records."""
    from zreward_deploy.evaluation import evaluate

    ev = evaluate(scorer, records, batch_size=batch_size)
    return {k: float(ev.metrics[k]) for k in REPORTED_METRICS}


def eval_records(cfg: TrainConfig, processor: ZRewardProcessor, dims: Sequence[str]) -> list[Any]:
    """``cfg.eval_split``'s records that carry a label in ``dims``, their labels limited to ``dims``
    (evaluate what was trained)."""
    import dataclasses

    from zreward_deploy.data import load_split

    c = processor.config
    records = load_split(cfg.data, cfg.eval_split, scale=c.get_score_scale(), rubric=c.get_rubric())
    return [
        dataclasses.replace(
            r,
            scores={k: v for k, v in r.scores.items() if k in dims},
            annotations={k: v for k, v in r.annotations.items() if k in dims},
        )
        for r in records
        if any(d in r.dimensions for d in dims)
    ]


def evaluate_during_training(
    run: Run,
    model: ZRewardModel,
    processor: ZRewardProcessor,
    dims: Sequence[str],
    reasoning: bool,
    reasoning_kwargs: Mapping[str, Any] | None = None,
    prefix: str = "eval/",
) -> dict[str, float]:
    """Metrics of the model on ``eval_split`` (main process; the others wait and get ``{}``): scored
    in one pass, or after reasoning (:class:`~zreward_deploy.scoring.ReasoningScorer`, seeded by ``cfg.seed``)."""
    out: dict[str, float] = {}
    if run.is_main:
        was_training = model.training
        if reasoning:
            from zreward_deploy.scoring import ReasoningScorer

            kwargs = dict(reasoning_kwargs or {})
            scorer: Any = ReasoningScorer(model, processor, seed=run.config.seed, **kwargs)
        else:
            from zreward_deploy.scoring import Scorer

            scorer = Scorer(model, processor)
        metrics = evaluate_scorer(scorer, eval_records(run.config, processor, dims))
        out = {f"{prefix}{k}": v for k, v in metrics.items()}
        model.train(was_training)
    run.barrier()
    return out
