"""RISD: distil a reasoning teacher's score distributions into a one-pass student (docs/method.md §4).

1. **Targets, once.** The frozen teacher samples ``teacher_samples`` reasoning trace(s) per
   (image, prompt, dimension) of the distillation split (labels are not needed) and reads
   ``q_T(s | p, I, d, ρ_T)`` after each; the n distributions are averaged (n = 1 is the paper's
   Algorithm 2; n > 1 is the optional average, docs/method.md §4). They are written to a JSONL cache, one line
   per (item id, dimension) with its provenance (teacher directory, seed, n, sampling settings), so
   distillation runs without the teacher in memory, and a rerun reuses the cache only if the provenance
   matches.
2. **Student.** The one-pass student (all dimensions at once, no reasoning) minimises the forward
   ``KL(q_T ‖ q_φ)`` averaged over the (item, dimension) entries (:func:`~.losses.forward_kl_loss`), in
   the same loop as SFT (:func:`~.student_loop.run_student_loop`). No CE to labels, no temperature (the paper
   names neither).
3. **Judgements** (optional): where train_split has a preference file, ``preference_weight`` × the
   Bradley–Terry loss on the student's μ is added to the KL, as in SFT (docs/training.md).

The cache is built by the main process only (the others wait for it), generation seeded per
(dimension, chunk of items), so it is the same whatever the number of training processes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from zreward_deploy.data import Record, load_preferences, load_split
from zreward_deploy.fileio import atomic_write_text
from zreward_deploy.generation import derive_seed, generate_reasoning

from .config import ConfigError, StudentConfig, help_text, require_at_least
from .data import ImageCache, PreferenceData, StudentBatch, StudentData, resolve_dimensions
from .losses import forward_kl_loss
from .models import load_model
from .run import Run, TrainResult, start_run
from .sampling import check_sampling, sampling_field
from .student_loop import run_student_loop

CACHE_FILE = "teacher_targets.jsonl"


@dataclass
class RISDConfig(StudentConfig):
    """RISD: forward KL from cached teacher distributions to a one-pass student (plus the pairwise term
    on judgements where the data has them)."""

    method: ClassVar[str] = "risd"

    teacher: str = field(
        default="", metadata=help_text("teacher model directory (required), e.g. a GDSO run's model/")
    )
    teacher_samples: int = field(
        default=1,
        metadata=help_text("n: reasoning traces per (item, dimension) whose q_T are averaged (paper: 1)"),
    )
    # the frozen teacher's sampling settings (defaults and checks: training/sampling.py)
    teacher_max_new_tokens: int = sampling_field("max_new_tokens", "longest teacher reasoning trace (tokens)")
    teacher_temperature: float = sampling_field("temperature", "teacher sampling temperature")
    teacher_top_p: float = sampling_field("top_p", "teacher nucleus sampling threshold")
    teacher_batch_size: int = field(
        default=32, metadata=help_text("items per teacher generate call (cache build)")
    )
    cache: str = field(
        default="",
        metadata=help_text(
            f"teacher-target cache (JSONL); default output_dir/{CACHE_FILE}. Reused when its provenance matches"
        ),
    )
    rebuild_cache: bool = field(
        default=False, metadata=help_text("regenerate the cache even if a matching one exists")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ConfigError("data", "is required (a dataset folder; its labels are not used)")
        if not self.teacher:
            raise ConfigError("teacher", "is required (the teacher model directory)")
        require_at_least(self, 1, "teacher_samples", "teacher_batch_size")
        check_sampling(self, prefix="teacher_")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache) if self.cache else Path(self.output_dir) / CACHE_FILE

    def provenance(self) -> dict[str, Any]:
        """What a cache line must record to be reused by this config."""
        return {
            "teacher": str(Path(self.teacher).resolve()),
            "seed": self.seed,
            "n": self.teacher_samples,
            "max_new_tokens": self.teacher_max_new_tokens,
            "temperature": self.teacher_temperature,
            "top_p": self.teacher_top_p,
        }


def build_teacher_cache(
    cfg: RISDConfig,
    records: Sequence[Record],
    dimensions: Sequence[str],
    path: Path,
    device: torch.device | str = "cpu",
) -> dict[str, int]:
    """Generate q_T for every (record, dimension) on ``device`` and write the JSONL cache atomically.

    Returns:
        ``{"entries": ..., "tokens": ...}``: lines written and reasoning tokens generated.
    """
    teacher, processor = load_model(cfg.teacher)
    teacher.eval().to(device)
    provenance = cfg.provenance()
    n, step = cfg.teacher_samples, cfg.teacher_batch_size
    lines, tokens = [], 0
    for dim in dimensions:
        for start in range(0, len(records), step):
            chunk = records[start : start + step]
            out = generate_reasoning(
                teacher,
                processor,
                [str(r.image_path) for r in chunk],
                [r.prompt for r in chunk],
                dim,
                num_samples=n,
                max_new_tokens=cfg.teacher_max_new_tokens,
                temperature=cfg.teacher_temperature,
                top_p=cfg.teacher_top_p,
                seed=derive_seed(cfg.seed, "risd-cache", dim, start),
            )
            probs = (
                out.probs.detach().cpu().double().reshape(len(chunk), n, -1).mean(1)
            )  # average over n traces
            lengths = out.reasoning_mask.sum(1).reshape(len(chunk), n).sum(1)
            values = torch.tensor(processor.config.get_score_scale().values, dtype=torch.float64)
            for r, q, t in zip(chunk, probs, lengths, strict=True):
                lines.append(
                    json.dumps(
                        {
                            "id": r.id,
                            "dimension": dim,
                            "probs": [round(float(x), 8) for x in q],
                            "mean": round(float((q * values).sum()), 6),
                            "tokens": int(t),
                            **provenance,
                        }
                    )
                    + "\n"
                )
            tokens += int(lengths.sum())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(lines))
    return {"entries": len(lines), "tokens": tokens}


def read_teacher_cache(
    path: Path, provenance: dict[str, Any] | None = None
) -> dict[tuple[str, str], torch.Tensor]:
    """``{(id, dimension): q_T [K]}`` from a cache; with ``provenance``, every line must match it."""
    targets: dict[tuple[str, str], torch.Tensor] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key, probs = (row["id"], row["dimension"]), torch.tensor(row["probs"], dtype=torch.float32)
        except (ValueError, KeyError, TypeError) as exc:  # a damaged file: say where, and how to recover
            raise ConfigError(
                str(path),
                f"line {number} is not a teacher target ({type(exc).__name__}); set rebuild_cache=true",
            ) from None
        if not bool(torch.isfinite(probs).all()):
            raise ConfigError(
                str(path), f"line {number} holds NaN or infinite values; set rebuild_cache=true"
            )
        if provenance is not None:
            differs = {k: row.get(k) for k, v in provenance.items() if row.get(k) != v}
            if differs:
                raise ConfigError(
                    str(path),
                    f"line {number} was made with {differs}, not this config's "
                    f"{ {k: provenance[k] for k in differs} }; set rebuild_cache=true or another cache path",
                )
        targets[key] = probs
    return targets


def prepare_targets(
    run: Run, cfg: RISDConfig, records: Sequence[Record], dims: Sequence[str]
) -> dict[tuple[str, str], torch.Tensor]:
    """Reuse the cache if it matches and covers every (record, dimension), else build it (main process)."""
    path = cfg.cache_path
    needed = {(r.id, d) for r in records for d in dims}
    if run.is_main:
        fresh = cfg.rebuild_cache or not path.is_file()
        if not fresh:
            cached = read_teacher_cache(path, cfg.provenance())
            fresh = not needed <= set(cached)
        if fresh:
            stats = build_teacher_cache(cfg, records, dims, path, run.device)
            run.metrics.log(0, {"cache/entries": stats["entries"], "cache/teacher_tokens": stats["tokens"]})
    run.barrier()
    targets = read_teacher_cache(path, cfg.provenance())
    missing = needed - set(targets)
    if missing:
        raise ConfigError(
            str(path),
            f"has no target for {len(missing)} (item, dimension) entries, e.g. {sorted(missing)[0]}",
        )
    return {key: targets[key] for key in needed}


def make_risd_loss(values: Sequence[float]) -> Any:
    """The RISD :data:`~.student_loop.StudentLoss`: summed forward KL over the local entries, and (for the
    log) the mean |μ_student − μ_teacher|; ``values`` are the K score values."""
    v = torch.tensor(list(values), dtype=torch.float32)

    def loss(out: Any, batch: StudentBatch) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch.mask.to(out.logprobs.device)
        targets = batch.targets.to(out.logprobs.device)
        kl_sum = forward_kl_loss(targets, out.logprobs, mask) * mask.sum()
        with torch.no_grad():
            teacher_mu = (targets * v.to(targets.device)).sum(-1)
            gap = (out.mean.detach() - teacher_mu).abs()[mask]
        return kl_sum, {"teacher_mu_mae": float(gap.mean()) if gap.numel() else 0.0}

    return loss


def train_risd(cfg: RISDConfig) -> TrainResult:
    """Run RISD: build or reuse the teacher-target cache, then train the student (``output_dir/model``)."""
    run = start_run(cfg)
    if run.already_trained:
        return run.already_trained_result()
    model, processor = load_model(cfg.model, seed=cfg.seed)
    records = load_split(
        cfg.data,
        cfg.train_split,
        scale=processor.config.get_score_scale(),
        rubric=processor.config.get_rubric(),
    )
    dims = resolve_dimensions(processor, None, cfg.dimensions)
    # decode first: the teacher cache covers only the records the student can train on (an undecodable
    # image would otherwise stop the teacher's generation, then be skipped by the student anyway)
    images = ImageCache(records, processor)
    targets = prepare_targets(run, cfg, images.records, dims)
    k = processor.config.get_score_scale().num_scores
    if any(q.numel() != k for q in targets.values()):
        raise ConfigError("teacher", f"the teacher's score scale does not have the student's {k} values")
    data = StudentData(images, processor, dims, targets=targets)
    loss = make_risd_loss(processor.config.get_score_scale().values)
    preferences = None
    if cfg.preference_weight > 0:
        config = processor.config
        judged = load_preferences(
            cfg.data, cfg.train_split, config.get_score_scale(), config.get_rubric(), records=records
        )
        preferences = PreferenceData(judged, data, processor) if judged else None
    return run_student_loop(run, model, processor, data, loss, loss_name="kl", preferences=preferences)
