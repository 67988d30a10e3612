"""The settings of a synthetic dataset (``zreward data synth``), free of numpy, PIL and torch so that the
command's ``--help`` lists them at once (its flags come from these fields, :mod:`zreward_deploy.cliargs`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ZRewardInputError

STYLES: tuple[str, ...] = ("natural", "flat")
"""Scene styles (docs/data.md §3): ``natural`` (textured, lit, photographic statistics; the default) or
``flat`` (flat-coloured shapes, the original scenes, byte-identical to the releases before ``natural``)."""


@dataclass(frozen=True)
class SynthConfig:
    """Size and seed of a synthetic dataset; each field is a flag of ``zreward data synth``."""

    prompts: int = field(default=60, metadata={"help": "number of prompts (scenes)"})
    images_per_prompt: int = field(default=4, metadata={"help": "images per prompt (M >= 2 makes pairs)"})
    annotators: int = field(default=5, metadata={"help": "simulated annotators per image"})
    image_size: int = field(default=64, metadata={"help": "side of the square PNG images, pixels"})
    seed: int = field(default=0, metadata={"help": "random seed; the same seed gives identical bytes"})
    val_fraction: float = field(default=0.15, metadata={"help": "fraction of the prompts in val.jsonl"})
    test_fraction: float = field(default=0.15, metadata={"help": "fraction of the prompts in test.jsonl"})
    style: str = field(
        default="natural",
        metadata={
            "help": "scene style: natural (textured surfaces, lighting, soft shadows, a sensor noise floor) "
            "or flat (flat-coloured shapes, the scenes before natural existed)",
            "choices": STYLES,
        },
    )

    def __post_init__(self) -> None:
        # field -> (valid?, the valid range in words); errors name the flag a user types
        checks = {
            "prompts": (self.prompts >= 1, ">= 1"),
            "images_per_prompt": (self.images_per_prompt >= 2, ">= 2 (pairs need two images of a prompt)"),
            "annotators": (self.annotators >= 1, ">= 1"),
            "image_size": (16 <= self.image_size <= 1024, "between 16 and 1024 pixels"),
            "seed": (self.seed >= 0, ">= 0"),
            "val_fraction": (0 <= self.val_fraction < 1, "in [0, 1)"),
            "test_fraction": (
                0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1,
                "in [0, 1), with val_fraction + test_fraction < 1",
            ),
            "style": (self.style in STYLES, f"one of {', '.join(STYLES)}"),
        }
        for name, (ok, valid) in checks.items():
            if not ok:  # every field is a flag of `zreward data synth` (zreward_deploy.cliargs)
                flag = "--" + name.replace("_", "-")
                raise ZRewardInputError(flag, f"must be {valid}, got {getattr(self, name)!r}")
