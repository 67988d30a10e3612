"""Learning test: on a ``zreward data synth`` set, the SFT and RISD students learn the *realism*
dimension to HPA ≥ 0.8 on the test split, within the CI budget.

Why realism: it is driven by image statistics alone (blur, noise and pixelation lower it; docs/data.md
§3), which a tiny model trained from scratch picks up in a few hundred steps on a CPU, whereas alignment
needs prompt binding and is learnt slowly (docs/design.md §5.2). The ``tiny-64`` preset (the ``tiny`` sizes at
64 px, 64 image tokens) is used because at ``tiny``'s 32 px the downsampling averages the noise and blur
away and the same budget stays at chance (HPA ≈ 0.5 in our runs).

The chain, with the smallest settings we found to learn reliably here:

1. data: 300 prompts × 4 images (840 train / 60 val / 300 test records: a large test split keeps the HPA
   estimate's standard error near 0.02);
2. SFT student: 300 steps of 32 items, AdamW 7e-4, 20 warm-up steps then cosine;
3. teacher for RISD: the SFT weights as a cold start (the paper's teachers start from a base model; we
   have none that knows anything), then 20 GDSO steps (8 pairs, G = 2, reasoning of ≤ 2 tokens,
   α_pt = α_pw = 1, β = 0, AdamW 1e-4) so that the score read *after reasoning* with the teacher template
   is trained;
4. RISD student: a fresh ``tiny-64`` (not the SFT weights) trained on the teacher's cached q_T with the
   same schedule as SFT.

Seeds 0, 1, 2 of this chain (the ``seed`` of all three stages; the data's seed stays 0) give test HPA
0.852 / 0.854 / 0.844 (SFT) and 0.830 / 0.861 / 0.844 (RISD) on an Intel Xeon (AVX-512, 2 threads), the
test running seed 0. The GEMMs of different CPUs round differently, so the chain must clear 0.8 with a
margin on each, and the step most sensitive to that is the teacher's fine-tuning: with the teacher at 3e-4,
tuned on an AMD EPYC (2 threads, torch 2.13.0 CPU) where seeds 0/1/2 gave 0.842 / 0.854 / 0.849 (SFT) and
0.835 / 0.820 / 0.818 (RISD), the Intel seed-0 teacher lost ground to its SFT start (test HPA 0.852 → 0.783)
and its student stopped at 0.791 (seeds 1/2: 0.854 / 0.837). At 1e-4 (and at 2e-4: seed 0 → 0.827) the
teacher keeps its start (0.844 / 0.854 / 0.856) at no extra cost; the AMD numbers above are with 3e-4 and
have not been re-measured at 1e-4. Earlier trials: the student's learning rate was 1.5e-3
(docs/results.md's budget) until an AMD run left seed 0 at 0.827 (SFT) and 0.800 (RISD), hence 7e-4; with
250 student steps the RISD student of seeds 1 and 2 stopped at 0.80–0.81 on Intel; a teacher at 1e-3 lost
ground to its SFT start (0.81), which its student inherited. About 45 s on an idle 2-core AMD EPYC or
Intel Xeon (pytest --durations: ≈ 20 s setup + ≈ 23 s call).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

STUDENT = {
    "model": "preset:tiny-64",
    "dimensions": ["realism"],
    "max_steps": 300,
    "batch_size": 32,
    "learning_rate": 7e-4,
    "warmup_steps": 20,
    "lr_scheduler": "cosine",
    "eval_split": "test",
    "eval_at_end": True,
    "log_every": 50,
    "progress": False,
    "resume": "never",
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from zreward_deploy.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("synth_learning")
    generate_dataset(
        root,
        # the flat scenes the floors below were set on (the natural default is harder for these budgets:
        # docs/results.md has the students trained on it)
        SynthConfig(
            prompts=300, images_per_prompt=4, seed=0, val_fraction=0.05, test_fraction=0.25, style="flat"
        ),
    )
    return root


@pytest.fixture(scope="module")
def sft_student(synth, tmp_path_factory):
    from zreward_deploy.training.sft import SFTConfig, train_sft

    out = tmp_path_factory.mktemp("sft")
    return train_sft(SFTConfig(data=str(synth), output_dir=str(out), **STUDENT))


def test_sft_student_learns_realism(sft_student):
    assert sft_student.final_eval["hpa"] >= 0.8, sft_student.final_eval
    # and the loss went down from the untrained model's (≈ ln 5 plus the targets' entropy)
    assert sft_student.history[-1]["loss"] < sft_student.history[0]["loss"] - 0.2


def test_risd_student_learns_realism_from_a_reasoning_teacher(synth, sft_student, tmp_path_factory):
    from zreward_deploy.training.gdso import GDSOConfig, train_gdso
    from zreward_deploy.training.risd import RISDConfig, train_risd

    teacher = train_gdso(
        GDSOConfig(
            data=str(synth),
            output_dir=str(tmp_path_factory.mktemp("teacher")),
            model=str(sft_student.model_dir),
            dimensions=["realism"],
            max_steps=20,
            batch_size=8,
            group_size=2,
            max_new_tokens=2,
            inner_updates=1,
            beta=0.0,
            alpha_pt=1.0,
            alpha_pw=1.0,
            learning_rate=1e-4,
            progress=False,
            resume="never",
        )
    )
    student = train_risd(
        RISDConfig(
            data=str(synth),
            output_dir=str(tmp_path_factory.mktemp("risd")),
            teacher=str(teacher.model_dir),
            teacher_max_new_tokens=2,
            **STUDENT,
        )
    )
    assert student.final_eval["hpa"] >= 0.8, student.final_eval
    # it learnt from the teacher's distributions: its μ ends close to the teacher's
    assert student.history[-1]["teacher_mu_mae"] < 0.5 * student.history[0]["teacher_mu_mae"]
