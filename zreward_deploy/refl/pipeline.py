"""``zreward refl run``: the whole experiment of docs/results.md on a CPU, with nothing downloaded.

1. two synthetic sets (``zreward data synth``, style pinned): set A (seed s) trains the generator and the
   reward model; set B (seed s + 1), disjoint, trains the judge student;
2. the reward model and the judge student: given folders, or trained here by the caller's
   ``train_student`` (the package's SFT trainer on the ``realism`` dimension; the core library does not
   import the trainers, docs/design.md §2);
3. the tiny generator pretrained on set A's train split (:func:`~.generator.pretrain_generator`, cached);
4. reward fine-tuning (DRaFT-K or ReFL, :class:`~.finetune.RewardFinetuner`) on set A's training prompts;
5. evaluation on held-out prompts (in neither set) of the fine-tuned generator against the pretrained
   one: net win rates of the judge student, the image statistics and the reward model, and the
   reward-hacking check (:mod:`.evaluate`);
6. ``report.md``, ``summary.json``, sample grids (before / after, the same noise), the fine-tuned
   generator folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..devices import cpu_name
from ..errors import ZRewardInputError
from ..fileio import atomic_write_text
from .finetune import FinetuneConfig, RewardFinetuner
from .generator import (
    PretrainConfig,
    TinyGeneratorConfig,
    initial_noise,
    load_generator,
    pretrain_generator,
    save_generator,
)

TrainStudent = Callable[[Path, Path, int, int], Path]
"""``(data_dir, out_dir, seed, steps) -> model_dir``: trains a reward student on ``realism``."""

SYNTH_STYLE = "flat"
"""The synthetic style of both sets: flat-coloured scenes, which a CPU-sized generator learns in minutes
(the textured "natural" style is beyond it). Pinned so that a cached generator stays reproducible when
the default style changes."""


def default_cache() -> Path:
    """``$ZREWARD_CACHE/refl`` or ``$XDG_CACHE_HOME/zreward/refl`` (``~/.cache/zreward/refl``)."""
    if os.environ.get("ZREWARD_CACHE"):
        return Path(os.environ["ZREWARD_CACHE"]) / "refl"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zreward" / "refl"


@dataclass
class ReflRunConfig:
    """Budgets and seeds of one ``zreward refl run`` (each field is a flag)."""

    seed: int = field(default=0, metadata={"help": "seed of data, models, noise and prompts"})
    prompts: int = field(default=300, metadata={"help": "prompts of each synthetic set (4 images each)"})
    student_steps: int = field(default=250, metadata={"help": "SFT steps of the reward and judge students"})
    pretrain_steps: int = field(default=1200, metadata={"help": "generator pretraining steps (batch 32)"})
    method: str = field(default="refl", metadata={"help": "draft or refl", "choices": ("draft", "refl")})
    k: int = field(default=1, metadata={"help": "DRaFT-K"})
    finetune_steps: int = field(default=100, metadata={"help": "reward fine-tuning steps"})
    finetune_batch: int = field(default=8, metadata={"help": "images per fine-tuning step"})
    learning_rate: float = field(default=1e-4, metadata={"help": "fine-tuning learning rate"})
    reward_shift: float = field(
        default=4.0, metadata={"help": "random translation (px) of each image before the reward (0: none)"}
    )
    reward_zoom: float = field(default=0.15, metadata={"help": "random zoom-in (1 + Z) before the reward"})
    reg: str = field(default="l2", metadata={"help": "l2, kl or none", "choices": ("l2", "kl", "none")})
    reg_weight: float = field(default=1.0, metadata={"help": "weight of the regulariser"})
    grad_checkpointing: bool = field(default=False, metadata={"help": "checkpoint sampler and reward"})
    eval_prompts: int = field(default=64, metadata={"help": "held-out prompts in the evaluation"})
    eval_seeds: int = field(default=2, metadata={"help": "initial noises per held-out prompt"})
    reward: str | None = field(default=None, metadata={"help": "reward model folder (default: train one)"})
    judge: str | None = field(default=None, metadata={"help": "judge student folder (default: train one)"})
    cache: str | None = field(
        default=None, metadata={"help": "generator cache (default: ~/.cache/zreward/refl)"}
    )
    quick: bool = field(default=False, metadata={"help": "tiny sizes: checks the stages, measures nothing"})

    def __post_init__(self) -> None:
        for name in (
            "prompts",
            "student_steps",
            "pretrain_steps",
            "finetune_batch",
            "eval_prompts",
            "eval_seeds",
        ):
            if getattr(self, name) < 1:
                raise ZRewardInputError(
                    "--" + name.replace("_", "-"), f"must be >= 1, got {getattr(self, name)}"
                )
        if self.seed < 0 or self.finetune_steps < 0:
            raise ZRewardInputError("--seed", "seed and finetune steps must be >= 0")

    def generator_config(self) -> TinyGeneratorConfig:
        if self.quick:
            return TinyGeneratorConfig(
                image_size=32, block_out_channels=(16, 32), attention_levels=1, text_dim=32
            )
        return TinyGeneratorConfig()

    def pretrain_config(self) -> PretrainConfig:
        return PretrainConfig(steps=self.pretrain_steps, batch_size=8 if self.quick else 32, seed=self.seed)

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(
            method=self.method,  # type: ignore[arg-type]
            k=self.k,
            reg=self.reg,  # type: ignore[arg-type]
            reg_weight=self.reg_weight,
            reward_shift=self.reward_shift,
            reward_zoom=self.reward_zoom,
            learning_rate=self.learning_rate,
            grad_checkpointing=self.grad_checkpointing,
            steps=self.finetune_steps,
            batch_size=self.finetune_batch,
            seed=self.seed,
            dimensions=["realism"],
        )

    @classmethod
    def quick_run(cls, **overrides: Any) -> ReflRunConfig:
        """Every stage at a few steps (tests, a smoke check)."""
        sizes = {
            "prompts": 12, "student_steps": 2, "pretrain_steps": 2, "finetune_steps": 1,
            "finetune_batch": 2, "eval_prompts": 3, "eval_seeds": 1, "quick": True,
        }  # fmt: skip
        return cls(**{**sizes, **overrides})


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def synthesize(out: Path, prompts: int, seed: int) -> Path:
    """A synthetic set of ``prompts`` prompts x 4 images, the pinned style where the generator has it."""
    from ..data.synth import SynthConfig, generate_dataset

    kwargs: dict[str, Any] = {"prompts": prompts, "images_per_prompt": 4, "seed": seed}
    if "style" in {f.name for f in dataclasses.fields(SynthConfig)}:
        kwargs["style"] = SYNTH_STYLE
    generate_dataset(out, SynthConfig(**kwargs), overwrite=True)
    return out


def dataset_prompts(data_dir: Path, splits: tuple[str, ...] = ("train", "val", "test")) -> list[str]:
    """The distinct prompt texts of ``splits``, in first-seen order."""
    from ..data import load_split

    seen: dict[str, None] = {}
    for split in splits:
        if (data_dir / f"{split}.jsonl").is_file():
            for record in load_split(data_dir, split):
                seen.setdefault(record.prompt, None)
    return list(seen)


def run_refl(
    cfg: ReflRunConfig, out_dir: str | os.PathLike, train_student: TrainStudent | None
) -> dict[str, Any]:
    """Run every stage into ``out_dir`` (module docstring); returns the summary also written to
    ``summary.json``. ``train_student`` trains the reward/judge students that ``cfg`` does not name."""
    from ..scoring import Scorer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    summary: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "load_avg_start": list(os.getloadavg()),
        "machine": _machine(),
        "stages": {},
    }

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        _say(f"[refl] {name} ...")
        t0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        summary["stages"][name] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
        _say(f"[refl] {name}: done in {wall:.1f} s ({cpu:.1f} s of CPU)")
        return value

    data_a = stage(
        "data A (generator, reward)", lambda: synthesize(out / "data" / "a", cfg.prompts, cfg.seed)
    )
    data_b = stage("data B (judge)", lambda: synthesize(out / "data" / "b", cfg.prompts, cfg.seed + 1))
    reward_dir = _student(
        cfg.reward, "reward model", data_a, out / "reward", cfg.seed, cfg, train_student, stage
    )
    judge_dir = _student(
        cfg.judge, "judge student", data_b, out / "judge", cfg.seed + 1, cfg, train_student, stage
    )
    cache = Path(cfg.cache) if cfg.cache else default_cache()
    gen, gen_dir, cached = stage(
        "pretrain generator",
        lambda: pretrain_generator(data_a, cache, cfg.generator_config(), cfg.pretrain_config()),
    )
    summary["generator"] = {
        "dir": str(gen_dir),
        "from_cache": cached,
        "pretrain_wall_s": gen.record.get("pretrain_wall_s"),
        "pretrain_cpu_s": gen.record.get("pretrain_cpu_s"),
        "pretrain_load_avg": gen.record.get("load_avg"),
    }
    reward_scorer = Scorer.from_pretrained(reward_dir)
    judge_scorer = Scorer.from_pretrained(judge_dir)
    tuned = load_generator(gen_dir)
    fcfg = cfg.finetune_config()
    finetuner = RewardFinetuner(
        tuned.unet.train(),
        tuned.scheduler,
        reward_scorer,
        tuned.encode_prompt,
        latent_shape=tuned.config.latent_shape,
        config=fcfg,
        decode=tuned.decode,
    )
    train_prompts = dataset_prompts(data_a, ("train",))
    history = stage("fine-tune", lambda: finetuner.train(train_prompts))
    tuned.unet.eval()
    summary["finetune"] = {
        "config": dataclasses.asdict(fcfg),
        "history": [dataclasses.asdict(h) for h in history],
        "median_step_s": _median([h.seconds for h in history]),
    }
    record = {**gen.record, "finetune": summary["finetune"]["config"], "reward_model": str(reward_dir)}
    save_generator(tuned, out / "finetuned", record)

    exclude = set(dataset_prompts(data_a)) | set(dataset_prompts(data_b))
    held = held_out_prompts_for(cfg, exclude)
    prompts = [p for p in held for _ in range(cfg.eval_seeds)]
    noise = torch.cat(
        [initial_noise(1, gen.config.latent_shape, [cfg.seed, 31337, i]) for i in range(len(prompts))]
    )
    from .evaluate import compare_generators, save_grid
    from .reward import ScorerReward

    steps = fcfg.num_inference_steps
    comparison = stage(
        "evaluate",
        lambda: compare_generators(
            lambda p, z: gen.generate(p, noise=z, num_inference_steps=steps),
            lambda p, z: tuned.generate(p, noise=z, num_inference_steps=steps),
            prompts,
            noise,
            ScorerReward(reward_scorer, ["realism"]),
            ScorerReward(judge_scorer, ["realism"]),
        ),
    )
    summary["evaluation"] = {**comparison.to_dict(), "held_out_prompts": len(held), "seeds": cfg.eval_seeds}
    n_grid = min(32, len(prompts))
    save_grid(comparison.before[:n_grid], out / "grid_before.png", columns=8, scale=2)
    save_grid(comparison.after[:n_grid], out / "grid_after.png", columns=8, scale=2)
    summary.update(
        reward_model=str(reward_dir),
        judge_student=str(judge_dir),
        finetuned=str(out / "finetuned"),
        total_s=round(time.perf_counter() - started, 1),
        total_cpu_s=round(time.process_time() - cpu_started, 1),
        load_avg_end=list(os.getloadavg()),
    )
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    atomic_write_text(out / "report.md", format_report(summary))
    return summary


def held_out_prompts_for(cfg: ReflRunConfig, exclude: set[str]) -> list[str]:
    from .evaluate import held_out_prompts

    return held_out_prompts(cfg.eval_prompts, exclude, cfg.seed)


def _student(
    given: str | None,
    name: str,
    data: Path,
    out: Path,
    seed: int,
    cfg: ReflRunConfig,
    train_student: TrainStudent | None,
    stage: Callable[[str, Callable[[], Any]], Any],
) -> Path:
    if given:
        return Path(given)
    if train_student is None:
        raise ZRewardInputError(name, "no model folder given and no trainer to train one")
    return stage(f"train {name}", lambda: Path(train_student(data, out, seed, cfg.student_steps)))


def _median(values: list[float]) -> float | None:
    return float(sorted(values)[len(values) // 2]) if values else None


def _machine() -> dict[str, Any]:
    import diffusers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
    }


def format_report(summary: dict[str, Any]) -> str:
    """``report.md``: the per-judge net win rates, the statistics, the verdict, the budgets and times."""
    ev, cfg = summary["evaluation"], summary["config"]
    lines = [
        "# Reward fine-tuning of the tiny generator",
        "",
        f"Method {cfg['method']} (K={cfg['k']}), {cfg['finetune_steps']} steps x {cfg['finetune_batch']} images, "
        f"lr {cfg['learning_rate']}, reg {cfg['reg']} (weight {cfg['reg_weight']}), reward jitter "
        f"{cfg['reward_shift']} px / zoom {cfg['reward_zoom']}, seed {cfg['seed']}.",
        f"Held-out prompts: {ev['held_out_prompts']} x {ev['seeds']} noises = {ev['pairs']} pairs "
        "(fine-tuned vs pretrained, the same initial noise).",
        "",
        "| judge | net win rate | wins | losses | ties | mean before | mean after |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {
        "student": "second student (realism, disjoint data, other seed)",
        "student_jittered": "second student, both images shifted alike (≤ 1.5 px, zoom ≤ 8 %)",
        "statistics": "image statistics (majority of 3)",
        "reward": "reward model (optimised; not independent)",
    }
    for key in ("student", "student_jittered", "statistics", "reward"):
        j = ev["judges"][key]
        if not j.get("run"):
            lines.append(f"| {names[key]} | not run | | | | | |")
            continue
        before = f"{j['mean_before']:.3f}" if "mean_before" in j else ""
        after = f"{j['mean_after']:.3f}" if "mean_after" in j else ""
        lines.append(
            f"| {names[key]} | {j['net']:+.3f} | {j['wins']} | {j['losses']} | {j['ties']} | {before} | {after} |"
        )
    for name, s in ev["statistics"].items():
        arrow = "higher" if s["higher_is_better"] else "lower"
        lines.append(
            f"| &nbsp;&nbsp;{name} ({arrow} is better; ties within {s['tolerance']:g}) | {s['net']:+.3f} | "
            f"{s['wins']} | {s['losses']} | "
            f"{s['ties']} | {s['mean_before']:.3f} | {s['mean_after']:.3f} |"
        )
    gen = summary["generator"]
    ft = summary["finetune"]
    hist = ft["history"]
    lines += [
        "",
        f"Pixel change between the images of a pair: mean |Δ| {ev['change']['mean_abs_255']:.2f} of 255 grey "
        f"levels, median PSNR {ev['change']['median_psnr_db']:.1f} dB. Strongly coloured pixels (the objects of "
        f"the flat scenes): {100 * ev['change']['saturated_before']:.1f} % before, "
        f"{100 * ev['change']['saturated_after']:.1f} % after (the reward is realism only: objects may go).",
        "",
        f"**Reward-hacking check:** {ev['verdict']}.",
        "",
        f"Training reward (batch mean): step 1 {hist[0]['reward']:.3f} -> step {len(hist)} {hist[-1]['reward']:.3f}"
        if hist
        else "No fine-tuning steps were run.",
        "",
        "Stage times, wall / CPU (s): "
        + ", ".join(f"{k} {v['wall_s']} / {v['cpu_s']}" for k, v in summary["stages"].items())
        + ".",
        f"Generator: {gen['dir']} ({'from the cache' if gen['from_cache'] else 'pretrained in this run'}; "
        f"pretraining took {gen['pretrain_wall_s']} s wall, {gen['pretrain_cpu_s']} s of CPU). Median fine-tuning "
        f"step {ft['median_step_s']:.2f} s."
        if ft["median_step_s"] is not None
        else f"Generator: {gen['dir']}.",
        f"Machine: {summary['machine']['cpu']}, {summary['machine']['cpus']} CPUs, torch "
        f"{summary['machine']['torch']} ({summary['machine']['threads']} threads), diffusers "
        f"{summary['machine']['diffusers']}; load average {summary['load_avg_start'][0]:.1f} at the start, "
        f"{summary['load_avg_end'][0]:.1f} at the end (other jobs share the machine). Total {summary['total_s']} s "
        f"wall, {summary['total_cpu_s']} s of CPU (this process).",
        "",
        "Samples (first 32 pairs; same positions = same prompt and noise): `grid_before.png`, `grid_after.png`.",
        "",
    ]
    return "\n".join(lines)
