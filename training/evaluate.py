"""Evaluation during and after training: the trained model's HPA, margin-HPA, PLCC and SRCC on
``eval_split``, limited to the dimensions it was trained on, scored in one pass (students) or after
reasoning (teachers and the OPD student); where ``eval_split`` has a preference file, also the preference
HPA of its judgements on those dimensions (``pref_hpa``, over ``pref_pairs`` non-tie judgements).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from zreward_deploy.modeling import ZRewardModel
from zreward_deploy.processing import ZRewardProcessor

from .config import TrainConfig
from .run import Run

REPORTED_METRICS = ("hpa", "margin_hpa", "plcc", "srcc")


def evaluate_scorer(
    scorer: Any,
    records: Sequence[Any],
    batch_size: int = 32,
    preferences: Sequence[Any] | None = None,
    judged_records: Sequence[Any] | None = None,
) -> dict[str, float]:
    """HPA, margin-HPA, PLCC and SRCC (pooled over the labelled dimensions) of a scorer on records; with
    ``preferences`` (judgements between ``judged_records``, default ``records``) also ``pref_hpa`` and
    ``pref_pairs``, and then the scored metrics only when some record is labelled."""
    from zreward_deploy.evaluation import evaluate, evaluate_preferences

    out: dict[str, float] = {}
    if preferences is None or any(r.dimensions for r in records):
        ev = evaluate(scorer, records, batch_size=batch_size)
        out = {k: float(ev.metrics[k]) for k in REPORTED_METRICS}
    if preferences:
        judged = records if judged_records is None else judged_records
        report = evaluate_preferences(scorer, judged, preferences, batch_size=batch_size)
        out.update(pref_hpa=float(report["hpa"]), pref_pairs=float(report["n_pairs"]))
    return out


def eval_records(cfg: TrainConfig, processor: ZRewardProcessor, dims: Sequence[str]) -> list[Any]:
    """``cfg.eval_split``'s records that carry a label in ``dims``, their labels limited to ``dims``
    (evaluate what was trained)."""
    return _eval_data(cfg, processor, dims)[0]


def _eval_data(
    cfg: TrainConfig, processor: ZRewardProcessor, dims: Sequence[str]
) -> tuple[list[Any], list[Any], list[Any]]:
    """:func:`eval_records`, the split's judgements on ``dims`` ("overall" ones when ``dims`` cover the
    rubric) and all its records (the judged ones among them)."""
    import dataclasses

    from zreward_deploy.data import OVERALL, load_preferences, load_split

    c = processor.config
    scale, rubric = c.get_score_scale(), c.get_rubric()
    records = load_split(cfg.data, cfg.eval_split, scale=scale, rubric=rubric)
    labelled = [
        dataclasses.replace(
            r,
            scores={k: v for k, v in r.scores.items() if k in dims},
            annotations={k: v for k, v in r.annotations.items() if k in dims},
        )
        for r in records
        if any(d in r.dimensions for d in dims)
    ]
    overall = OVERALL not in rubric.names and all(n in dims for n in rubric.names)
    judged = [
        p
        for p in load_preferences(cfg.data, cfg.eval_split, scale, rubric, records=records)
        if p.dimension in dims or (overall and p.dimension == OVERALL)
    ]
    return labelled, judged, records


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
        records, judged, every = _eval_data(run.config, processor, dims)
        metrics = evaluate_scorer(scorer, records, preferences=judged or None, judged_records=every)
        out = {f"{prefix}{k}": v for k, v in metrics.items()}
        model.train(was_training)
    run.barrier()
    return out
