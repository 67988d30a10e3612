"""``zreward train sft|grpo|gdso|risd|opd [--config FILE] [key=value ...]``: run a trainer (docs/training.md).

The config is the trainer's dataclass: defaults, overridden by ``--config FILE`` (YAML), overridden by
``key=value`` (values parsed as YAML). Unknown keys are errors. ``--help-config`` lists every field with
its default and help; ``--print-config`` prints the resolved config and exits. Multi-process:
``accelerate launch --multi_gpu --num_processes 2 -m zreward_deploy.cli train sft ...`` (two gloo processes
on a machine without GPUs; ``--cpu --num_processes 2`` starts only one) or ``torchrun --nproc_per_node 2
-m zreward_deploy.cli train sft ...``; docs/training.md §5 has the GPU and multi-node commands.

A run that cannot go on stops with one line ``zreward: error: ...`` and exit status 2: a config value
refused (a non-finite float included), a damaged checkpoint (``InvalidModelError`` naming the file), or a
NaN/inf loss or gradient norm (``NonFiniteLossError``, naming the step and the last good checkpoint).
What a run tolerates (an image that does not decode, a cut last line of metrics.jsonl, a missing RNG file,
``latest`` naming a lost checkpoint) is printed as ``zreward: warning: ...`` lines (docs/training.md §4).
"""

from __future__ import annotations

import argparse
import logging

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
    p.set_defaults(func=run_train)


def load_trainer(method: str) -> tuple[type, object]:
    """The config class and train function of a method."""
    import importlib

    module_name, config_name, fn_name = TRAINERS[method]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, fn_name)


def format_config_help(config_cls: type) -> str:
    import dataclasses

    lines = [f"{config_cls.method} config fields (name: type = default -- help):"]
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        lines.append(f"  {f.name}: {f.type} = {default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


class _WarningFormatter(logging.Formatter):
    """``zreward: warning: message``, in the style of the CLI's ``zreward: error: ...`` line."""

    def format(self, record: logging.LogRecord) -> str:
        return f"zreward: {record.levelname.lower()}: {record.getMessage()}"


def show_training_warnings() -> None:
    """Print the trainers' warnings on stderr, unless the caller set up logging (then they go there).

    Without a handler Python would print them anyway (its last-resort handler), but unlabelled; a
    handler is added once, to the trainers' logger only, so nothing else about logging changes.
    """
    trainers = logging.getLogger("zreward_deploy.training")
    if logging.getLogger().handlers or trainers.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(_WarningFormatter())
    handler.setLevel(logging.WARNING)
    trainers.addHandler(handler)


def run_train(args: argparse.Namespace) -> int:
    config_cls, train = load_trainer(args.method)
    if args.help_config:
        print(format_config_help(config_cls))
        return 0
    cfg = config_cls.from_sources(args.config, args.overrides)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    show_training_warnings()
    result = train(cfg)
    if not result.is_main_process:  # one summary per run, not one per process
        return 0
    print(f"{args.method}: {result.steps} steps; model saved to {result.model_dir}")
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
