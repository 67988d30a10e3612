"""``zreward model``: create, compose and inspect model directories."""

from __future__ import annotations

import argparse
import json

# The names of presets.PRESETS, here so that --help does not import torch (tests/test_cli.py keeps the two
# in step).
PRESET_NAMES = ("tiny", "tiny-64", "bench-small")


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("model", help="create, compose and inspect model directories")
    sub = group.add_subparsers(dest="model_command", metavar="<command>", required=True)

    create = sub.add_parser(
        "create", help="write a randomly initialised preset model (tests, demos, benchmarks)"
    )
    create.add_argument(
        "--preset",
        default="tiny",
        choices=PRESET_NAMES,
        help="tiny (32 px, tests), tiny-64 (64 px, the demo and docs/results.md) or bench-small "
        "(224 px, CPU benchmarks) (default: tiny)",
    )
    create.add_argument("--text-model", default="qwen2", help="qwen2, qwen3 or llama (default: qwen2)")
    create.add_argument("--vision-model", default="siglip", help="siglip or clip (default: siglip)")
    create.add_argument("--seed", type=int, default=0, help="initialisation seed (default: 0)")
    create.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    create.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    create.set_defaults(func=run_create)

    compose = sub.add_parser(
        "compose", help="assemble a model from pretrained vision and language checkpoints"
    )
    compose.add_argument("--vision", required=True, help="SigLIP/CLIP checkpoint directory (safetensors)")
    compose.add_argument(
        "--language", required=True, help="Qwen2/Qwen3/Llama checkpoint directory with tokenizer"
    )
    compose.add_argument("--seed", type=int, default=0, help="projector initialisation seed (default: 0)")
    compose.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    compose.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    compose.set_defaults(func=run_compose)

    info = sub.add_parser("info", help="print a model directory's sizes, rubric and score scale")
    info.add_argument("model", help="model directory")
    info.set_defaults(func=run_info)


def run_create(args: argparse.Namespace) -> int:
    from ..fileio import check_output_dir
    from ..modeling import save_model_dir
    from ..presets import build_preset

    check_output_dir(args.out, args.overwrite, marker=["config.json"])
    model, processor = build_preset(args.preset, args.text_model, args.vision_model, seed=args.seed)
    save_model_dir(model, processor, args.out)
    print(
        f"wrote {args.preset} model ({sum(p.numel() for p in model.parameters()):,} parameters) to {args.out}"
    )
    return 0


def run_compose(args: argparse.Namespace) -> int:
    from ..fileio import check_output_dir
    from ..modeling import save_model_dir
    from ..presets import compose

    check_output_dir(args.out, args.overwrite, protect=[args.vision, args.language], marker=["config.json"])
    model, processor = compose(args.vision, args.language, seed=args.seed)
    save_model_dir(model, processor, args.out)
    print(f"wrote composed model to {args.out}; its projector is untrained")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..modeling import ZRewardModel

    model = ZRewardModel.from_pretrained(args.model)
    c = model.config
    print(
        json.dumps(
            {
                "parameters": sum(p.numel() for p in model.parameters()),
                "vision": c.vision_config.model_type,
                "text": c.text_config.model_type,
                "image_size": c.image_size,
                "image_tokens": c.num_image_tokens,
                "score_scale": c.score_scale,
                "dimensions": c.get_rubric().names,
                "trained_dimensions": c.trained_dimensions(),
                "training": c.training,
            },
            indent=2,
        )
    )
    return 0
