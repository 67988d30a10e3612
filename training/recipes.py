"""Training recipes: the fixed budgets and trainer settings of the docs/results.md table, which
``zreward demo`` runs for one seed. One home for both (``bench/run_results.py`` and
``zreward_deploy/pipeline/demo.py`` import them); docs/results.md explains the choices.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

TEACHER_SEED_OFFSET = 1000
"""The teacher chain starts from another initialisation than the students: seed + 1000."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """Fixed budgets of one results run."""

    prompts: int = 300
    dimension: str = "realism"
    preset: str = "tiny-64"
    sft_steps: int = 250
    # the RISD student's steps: the results table's 250 (= sft_steps); ``Budget.demo``'s 1000
    risd_steps: int = 250
    student_batch: int = 32
    # 1.5e-3 until an AMD EPYC run left seed 2's RISD student on a plateau (HPA 0.66); docs/results.md
    student_lr: float = 7e-4
    rl_steps: int = 120
    rl_pairs: int = 8
    group_size: int = 4
    reasoning_tokens: int = 8
    opd_steps: int = 200
    opd_batch: int = 16
    eval_samples: int = 1
    cost_images: int = 32
    cost_repeats: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)

    @classmethod
    def demo(cls) -> Budget:
        """``zreward demo``'s budgets: the results table's, on 1000 prompts instead of 300, with the SFT
        teacher trained for 500 steps and the RISD student for 1000 instead of 250 each. With the table's
        budgets the natural-scene student lost most of its teacher's sense of blur on photographs, and
        with 250 SFT steps on the larger set a seed's teacher could stay weak (docs/results.md, "Transfer
        to photographs", which measures the three)."""
        return cls(prompts=1000, sft_steps=500, risd_steps=1000)

    @classmethod
    def quick(cls) -> Budget:
        return cls(
            prompts=12, sft_steps=3, risd_steps=3, student_batch=8, rl_steps=2, rl_pairs=2, group_size=2, reasoning_tokens=4,
            opd_steps=2, opd_batch=4, cost_images=4, cost_repeats=2, seeds=(0,),
        )  # fmt: skip


def student_kwargs(b: Budget, data: Path, out: Path, seed: int) -> dict[str, Any]:
    """Fields of an SFT/RISD config with the budget's one-pass training settings (also ``zreward demo``)."""
    return {
        "data": str(data),
        "output_dir": str(out),
        "model": f"preset:{b.preset}",
        "seed": seed,
        "dimensions": [b.dimension],
        "max_steps": b.sft_steps,
        "batch_size": b.student_batch,
        "learning_rate": b.student_lr,
        "warmup_steps": min(20, b.sft_steps // 5),
        "lr_scheduler": "cosine",
        "progress": False,
        "resume": "never",
        "log_every": 25,
    }


def rl_kwargs(b: Budget, data: Path, out: Path, init: Path, seed: int) -> dict[str, Any]:
    """Fields of a GRPO/GDSO config starting from the model directory ``init`` (also ``zreward demo``)."""
    return {
        "data": str(data),
        "output_dir": str(out),
        "model": str(init),
        "seed": seed,
        "dimensions": [b.dimension],
        "max_steps": b.rl_steps,
        "batch_size": b.rl_pairs,
        "group_size": b.group_size,
        "max_new_tokens": b.reasoning_tokens,
        "inner_updates": 2,
        "steps_per_iteration": max(1, b.rl_steps // 2),
        "learning_rate": 3e-4,
        "progress": False,
        "resume": "never",
        "log_every": 10,
    }


def risd_kwargs(b: Budget, data: Path, out: Path, teacher: Path, seed: int) -> dict[str, Any]:
    """Fields of a RISD config: the one-pass student settings, distilled from the model dir ``teacher``."""
    return {
        **student_kwargs(b, data, out, seed),
        "max_steps": b.risd_steps,
        "warmup_steps": min(20, b.risd_steps // 5),
        "teacher": str(teacher),
        "teacher_max_new_tokens": b.reasoning_tokens,
    }


def opd_kwargs(b: Budget, data: Path, out: Path, teacher: Path, seed: int) -> dict[str, Any]:
    """Fields of an OPD config: a reasoning student trained on-policy against the model dir ``teacher``."""
    return {
        **student_kwargs(b, data, out, seed),
        "max_steps": b.opd_steps,
        "batch_size": b.opd_batch,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "lr_scheduler": "constant",
        "teacher": str(teacher),
        "max_new_tokens": b.reasoning_tokens,
    }
