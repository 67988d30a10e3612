"""``zreward refl pretrain|finetune|evaluate|run|bench``: the reward as a differentiable signal for a
diffusion generator (docs/refl.md).

* ``pretrain --data DIR``: pretrain the tiny diffusers generator on a synthetic set's train split, or
  find it in the cache (a folder named by the hash of the configs and the data);
* ``finetune --generator DIR --reward MODEL --out DIR``: DRaFT-K or ReFL against the reward model;
* ``evaluate --before DIR --after DIR --reward MODEL [--judge MODEL] --exclude DATA --out DIR``: net win
  rates on held-out prompts and the reward-hacking check;
* ``run --out DIR``: all of it (two synthetic sets, the reward and judge students, pretraining,
  fine-tuning, evaluation, report.md with sample grids);
* ``bench --generator DIR --reward MODEL --out DIR``: time and peak memory per fine-tuning step, with
  and without gradient checkpointing (and the reference score head against the fused kernel on a GPU).

Progress goes to stderr (a line per 10 % when redirected); results and paths to stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from ..cliargs import ArgumentParser, dataclass_from_namespace, defer_dataclass_arguments, parse_list

GENERATOR_MARKERS = ("generator.json",)
RUN_MARKERS = ("summary.json", "report.md", "data")
EVAL_MARKERS = ("evaluation.json",)
BENCH_MARKERS = ("bench_refl.json",)


def _generator_configs() -> tuple[type, type]:
    from ..refl.generator import PretrainConfig, TinyGeneratorConfig

    return TinyGeneratorConfig, PretrainConfig


def _finetune_config() -> type:
    from ..refl.finetune import FinetuneConfig

    return FinetuneConfig


def _run_config() -> type:
    from ..refl.pipeline import ReflRunConfig

    return ReflRunConfig


def _bench_config() -> type:
    from ..refl.bench import ReflBenchConfig

    return ReflBenchConfig


def _threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "refl",
        help="fine-tune a diffusers generator with the reward (DRaFT-K, ReFL), judge it, time it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = group.add_subparsers(
        dest="refl_command", metavar="<refl command>", parser_class=ArgumentParser
    )

    pre = commands.add_parser("pretrain", help="pretrain the tiny generator on a synthetic set (cached)")
    pre.add_argument("--data", required=True, help="dataset folder (zreward data synth); its train split")
    pre.add_argument("--cache", help="cache folder (default: $ZREWARD_CACHE/refl or ~/.cache/zreward/refl)")
    _threads(pre)
    defer_dataclass_arguments(pre, lambda: _generator_configs()[0])
    defer_dataclass_arguments(pre, lambda: _generator_configs()[1])
    pre.set_defaults(func=run_pretrain)

    ft = commands.add_parser("finetune", help="DRaFT-K / ReFL fine-tuning against a reward model")
    ft.add_argument("--generator", required=True, help="generator folder (zreward refl pretrain)")
    ft.add_argument("--reward", required=True, help="reward model folder (a one-pass student)")
    ft.add_argument("--out", required=True, help="folder of the fine-tuned generator")
    ft.add_argument("--overwrite", action="store_true", help="replace an earlier fine-tuned generator there")
    ft.add_argument(
        "--prompts-from",
        help="dataset folder whose train prompts are fine-tuned on (default: the generator's pretraining data)",
    )
    _threads(ft)
    defer_dataclass_arguments(ft, _finetune_config)
    ft.set_defaults(func=run_finetune)

    ev = commands.add_parser("evaluate", help="fine-tuned vs pretrained generator on held-out prompts")
    ev.add_argument("--before", required=True, help="the pretrained generator folder")
    ev.add_argument("--after", required=True, help="the fine-tuned generator folder")
    ev.add_argument("--reward", required=True, help="the reward model folder")
    ev.add_argument("--judge", help="a second student trained on other data (independent judge)")
    ev.add_argument("--dimensions", default="realism", help="dimensions scored by reward and judge")
    ev.add_argument(
        "--exclude", required=True, help="dataset folders (comma-separated) whose prompts are not held out"
    )
    ev.add_argument("--out", required=True, help="output folder (evaluation.json, report, grids)")
    ev.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation there")
    ev.add_argument("--prompts", type=int, default=64, help="held-out prompts")
    ev.add_argument("--seeds", type=int, default=2, help="initial noises per prompt")
    ev.add_argument("--seed", type=int, default=0, help="seed of the prompts and noises")
    ev.add_argument("--steps", type=int, default=10, help="sampling steps")
    _threads(ev)
    ev.set_defaults(func=run_evaluate)

    run = commands.add_parser(
        "run", help="the whole experiment: data, students, pretraining, fine-tuning, report"
    )
    run.add_argument("--out", required=True, help="output folder (report.md, summary.json, grids)")
    run.add_argument("--overwrite", action="store_true", help="replace an earlier run there (deleted first)")
    _threads(run)
    defer_dataclass_arguments(run, _run_config)
    run.set_defaults(func=run_all)

    bench = commands.add_parser("bench", help="time and peak memory per fine-tuning step")
    bench.add_argument("--overwrite", action="store_true", help="replace an earlier benchmark in --out")
    defer_dataclass_arguments(bench, _bench_config)
    bench.set_defaults(func=run_bench)
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)


def run_pretrain(args: argparse.Namespace) -> int:
    from ..refl.generator import pretrain_generator
    from ..refl.pipeline import default_cache

    _set_threads(args)
    gen_cls, pre_cls = _generator_configs()
    gen_cfg, pre_cfg = dataclass_from_namespace(gen_cls, args), dataclass_from_namespace(pre_cls, args)
    gen, folder, cached = pretrain_generator(args.data, args.cache or default_cache(), gen_cfg, pre_cfg)
    how = "found in the cache" if cached else "pretrained"
    print(f"generator {how}: {folder} (pretraining took {gen.record.get('pretrain_wall_s')} s)")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from ..fileio import check_output_dir
    from ..refl.finetune import RewardFinetuner
    from ..refl.generator import load_generator, save_generator
    from ..refl.pipeline import dataset_prompts
    from ..scoring import Scorer

    _set_threads(args)
    cfg = dataclass_from_namespace(_finetune_config(), args)
    out = check_output_dir(args.out, args.overwrite, marker=GENERATOR_MARKERS, protect=[args.generator])
    gen = load_generator(args.generator)
    data = args.prompts_from or gen.record.get("data")
    if not data:
        raise_input("--prompts-from", "the generator names no pretraining data; give a dataset folder")
    prompts = dataset_prompts(Path(data), ("train",))
    finetuner = RewardFinetuner(
        gen.unet.train(),
        gen.scheduler,
        Scorer.from_pretrained(args.reward),
        gen.encode_prompt,
        latent_shape=gen.config.latent_shape,
        config=cfg,
        decode=gen.decode,
    )
    history = finetuner.train(prompts)
    gen.unet.eval()
    import dataclasses

    record = {
        **gen.record,
        "finetune": dataclasses.asdict(cfg),
        "finetune_history": [dataclasses.asdict(h) for h in history],
        "reward_model": str(args.reward),
        "pretrained": str(args.generator),
    }
    save_generator(gen, out, record)
    if history:
        print(
            f"reward (batch mean): step 1 {history[0].reward:.4f} -> step {len(history)} {history[-1].reward:.4f}"
        )
    print(f"fine-tuned generator: {out}")
    return 0


def raise_input(item: str, reason: str) -> None:
    from ..errors import ZRewardInputError

    raise ZRewardInputError(item, reason)


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from ..fileio import atomic_write_text, check_output_dir
    from ..refl.evaluate import compare_generators, held_out_prompts, save_grid
    from ..refl.generator import initial_noise, load_generator
    from ..refl.pipeline import dataset_prompts
    from ..refl.reward import ScorerReward
    from ..scoring import Scorer

    _set_threads(args)
    for flag in ("prompts", "seeds", "steps"):
        if getattr(args, flag) < 1:
            raise_input(f"--{flag}", f"must be >= 1, got {getattr(args, flag)}")
    out = check_output_dir(args.out, args.overwrite, marker=EVAL_MARKERS)
    dims = parse_list(args.dimensions, "--dimensions")
    before, after = load_generator(args.before), load_generator(args.after)
    if before.config != after.config:
        raise_input("--after", "has another architecture than --before: not a fine-tuned copy of it")
    exclude: set[str] = set()
    for folder in parse_list(args.exclude, "--exclude") or []:
        if not (Path(folder) / "train.jsonl").is_file():
            raise_input(folder, "is not a dataset folder (no train.jsonl)")
        exclude |= set(dataset_prompts(Path(folder)))
    held = held_out_prompts(args.prompts, exclude, args.seed)
    prompts = [p for p in held for _ in range(args.seeds)]
    shape = before.config.latent_shape
    noise = torch.cat([initial_noise(1, shape, [args.seed, 31337, i]) for i in range(len(prompts))])
    reward = ScorerReward(Scorer.from_pretrained(args.reward), dims)
    judge = ScorerReward(Scorer.from_pretrained(args.judge), dims) if args.judge else None
    result = compare_generators(
        lambda p, z: before.generate(p, noise=z, num_inference_steps=args.steps),
        lambda p, z: after.generate(p, noise=z, num_inference_steps=args.steps),
        prompts,
        noise,
        reward,
        judge,
    )
    out.mkdir(parents=True, exist_ok=True)
    n = min(32, len(prompts))
    save_grid(result.before[:n], out / "grid_before.png", scale=2)
    save_grid(result.after[:n], out / "grid_after.png", scale=2)
    value = {**result.to_dict(), "prompts": held, "seeds": args.seeds, "dimensions": dims}
    atomic_write_text(out / "evaluation.json", json.dumps(value, indent=2) + "\n")
    for name, j in result.judges.items():
        shown = (
            f"net {j['net']:+.3f} ({j['wins']} wins, {j['losses']} losses, {j['ties']} ties)"
            if j.get("run")
            else "not run"
        )
        print(f"{name}: {shown}")
    change = result.change
    print(
        f"pixel change: mean |d| {change['mean_abs_255']:.2f} / 255, median PSNR {change['median_psnr_db']:.1f} dB"
    )
    print(f"verdict: {result.verdict}")
    print(f"evaluation: {out / 'evaluation.json'}")
    return 0


def train_realism_student(data: Path, out: Path, seed: int, steps: int) -> Path:
    """SFT of a fresh ``tiny-64`` student on ``realism`` (the recipe of docs/results.md, ``steps`` steps)."""
    from ..training.recipes import Budget, student_kwargs
    from ..training.sft import SFTConfig, train_sft
    from .train import show_training_messages

    show_training_messages()
    budget = Budget(sft_steps=steps, student_batch=32 if steps >= 20 else 8)
    cfg = SFTConfig(**{**student_kwargs(budget, data, out, seed), "progress": True})
    return Path(train_sft(cfg).model_dir)


def run_all(args: argparse.Namespace) -> int:
    from ..fileio import check_output_dir
    from ..refl.pipeline import ReflRunConfig, run_refl

    _set_threads(args)
    cfg = dataclass_from_namespace(ReflRunConfig, args)
    if cfg.quick:
        keep = ("seed", "method", "k", "reg", "reg_weight", "grad_checkpointing", "reward", "judge", "cache")
        cfg = ReflRunConfig.quick_run(**{name: getattr(cfg, name) for name in keep})
    out = check_output_dir(args.out, args.overwrite, marker=RUN_MARKERS)
    if out.exists():
        shutil.rmtree(out)
    summary = run_refl(cfg, out, train_realism_student)
    ev = summary["evaluation"]
    for name, j in ev["judges"].items():
        print(f"{name}: net {j['net']:+.3f}" if j.get("run") else f"{name}: not run")
    print(f"verdict: {ev['verdict']}")
    print(f"report: {out / 'report.md'} (total {summary['total_s']:.0f} s)")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from ..fileio import check_output_dir
    from ..refl.bench import format_table, run_benchmark

    cfg = dataclass_from_namespace(_bench_config(), args)
    check_output_dir(cfg.out, args.overwrite, marker=BENCH_MARKERS)
    rows = run_benchmark(cfg)
    print(format_table(rows))
    print(f"results: {Path(cfg.out) / 'bench_refl.json'}", file=sys.stdout)
    return 0
