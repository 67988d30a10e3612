"""``zreward train sft|grpo|gdso|risd|opd [--config FILE] [key=value ...]``: run a trainer (docs/training.md).

The config is the trainer's dataclass: defaults, overridden by ``--config FILE`` (YAML), overridden by
``key=value`` (values parsed as YAML). Unknown keys are errors. ``--help-config`` lists every field with
its default and help (:func:`zreward_deploy.cliargs.format_fields`, beside the flags of every other
command); ``--print-config`` prints the resolved config and exits. Multi-process:
``accelerate launch --multi_gpu --num_processes 2 -m zreward_deploy.cli train sft ...`` (two gloo processes
on a machine without GPUs; ``--cpu --num_processes 2`` starts only one) or ``torchrun --nproc_per_node 2
-m zreward_deploy.cli train sft ...``; docs/training.md §5 has the GPU and multi-node commands.

Output folder (docs/training.md §4): a run into an ``output_dir`` that holds an earlier run continues it
(``resumed from step N ...``) when only ``max_steps`` and the logging, eval and checkpoint intervals differ
from its ``config.yaml``; any other difference is refused, naming the fields; ``--overwrite`` deletes the
earlier run first (only a folder that looks like a training run). A run already at ``max_steps`` says so and
trains nothing (exit status 0).

A run that cannot go on stops with one line ``zreward: error: ...`` and exit status 2: a config value
refused (a non-finite float included), a damaged checkpoint (``InvalidModelError`` naming the file), or a
NaN/inf loss or gradient norm (``NonFiniteLossError``, naming the step and the last good checkpoint).
Ctrl-C stops with one line naming the step reached, the checkpoint kept and how to resume (exit status
130). What a run tolerates (an image that does not decode, a cut last line of metrics.jsonl, a missing RNG
file, ``latest`` naming a lost checkpoint) is printed as ``zreward: warning: ...`` lines. Progress: a bar
on a terminal; with stderr redirected, a line every 5% of the run and at least every 30 s.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..cliargs import check_device, format_fields

# method -> (module, config class, train function); imported only when the command runs
TRAINERS: dict[str, tuple[str, str, str]] = {
    "sft": ("zreward_deploy.training.sft", "SFTConfig", "train_sft"),
    "grpo": ("zreward_deploy.training.grpo", "GRPOConfig", "train_grpo"),
    "gdso": ("zreward_deploy.training.gdso", "GDSOConfig", "train_gdso"),
    "risd": ("zreward_deploy.training.risd", "RISDConfig", "train_risd"),
    "opd": ("zreward_deploy.training.opd", "OPDConfig", "train_opd"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a reward model: sft, grpo, gdso (teachers/baselines), risd, opd (students)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("method", choices=sorted(TRAINERS), help="training method")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (YAML values)")
    p.add_argument("--config", metavar="FILE", help="YAML file of config values")
    p.add_argument("--help-config", action="store_true", help="list the method's config fields and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete output_dir's earlier run and start over (same as overwrite=true)",
    )
    p.add_argument(
        "--device",
        metavar="DEVICE",
        help="auto (a GPU if one is visible), cpu or cuda (same as device=DEVICE)",
    )
    p.set_defaults(func=run_train)


def summary_line(method: str, result: object) -> str:
    """What was trained and where the model is: ``sft: 2 steps; model saved to runs/train/model``."""
    steps, start = result.steps, result.start_step
    if not start:
        what = f"{steps} steps"
    elif steps == start:
        what = f"nothing left to train at step {steps} (the checkpoint's model is now the final one)"
    else:
        what = f"resumed at step {start}, trained {steps - start} more to step {steps}"
    return f"{method}: {what}; model saved to {result.model_dir}"


def load_trainer(method: str) -> tuple[type, object]:
    """The config class and train function of a method."""
    import importlib

    module_name, config_name, fn_name = TRAINERS[method]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, fn_name)


class _TrainingFormatter(logging.Formatter):
    """Warnings as ``zreward: warning: message`` (in the style of the CLI's ``zreward: error: ...``);
    information (progress lines off a terminal, the resume line) as the message alone."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return f"zreward: {record.levelname.lower()}: {record.getMessage()}"
        return record.getMessage()


def show_training_messages() -> None:
    """Print the trainers' warnings and information lines on stderr, unless the caller set up logging
    (then they go there, at the caller's levels).

    Python's last-resort handler would print only the warnings, unlabelled; a handler is added once, to
    the trainers' logger only (whose level becomes INFO), so nothing else about logging changes.
    """
    trainers = logging.getLogger("zreward_deploy.training")
    if logging.getLogger().handlers or trainers.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(_TrainingFormatter())
    handler.setLevel(logging.INFO)
    trainers.addHandler(handler)
    if trainers.level == logging.NOTSET:
        trainers.setLevel(logging.INFO)


def close_process_group() -> None:
    """Destroy a multi-process run's process group before the interpreter exits, as PyTorch asks: left to
    interpreter shutdown, a gloo group's threads were once torn down mid-flight (``terminate called
    without an active exception``, SIGABRT on one rank after the run had saved its model)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_train(args: argparse.Namespace) -> int:
    config_cls, train = load_trainer(args.method)
    if args.help_config:
        print(format_fields(config_cls, f"{config_cls.method} config fields"))
        return 0
    flags = [
        *(["overwrite=true"] if args.overwrite else []),
        *([f"device={args.device}"] if args.device else []),
    ]
    if args.device and args.device != "auto":
        check_device(args.device)  # `--device cuda` on a CPU-only PyTorch: one line naming the flag
    cfg = config_cls.from_sources(args.config, [*args.overrides, *flags])
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    show_training_messages()
    from zreward_deploy.training.run_rules import TrainingInterrupted

    try:
        result = train(cfg)
    except TrainingInterrupted as exc:
        if exc.is_main_process:  # one line per run, not one per process
            print(f"zreward: {exc}", file=sys.stderr)
        return 130  # 128 + SIGINT, as for any Ctrl-C
    finally:
        close_process_group()
    if not result.is_main_process:  # one summary per run, not one per process
        return 0
    if result.already_trained:
        n = result.steps
        print(
            f"already trained to step {n} in {result.output_dir}; nothing to do — raise the step budget "
            f"(max_steps > {n}) to train further, or --overwrite to start over"
        )
        print(f"model: {result.model_dir}")
        return 0
    print(summary_line(args.method, result))
    if result.skipped_items:
        print(
            f"skipped {result.skipped_items} training item(s) whose image cannot be decoded (see the warning)"
        )
    print(f"metrics: {result.output_dir / 'metrics.jsonl'}")
    if result.final_eval:
        print(
            "final eval ("
            + cfg.eval_split
            + "): "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.final_eval.items())
        )
    return 0
