"""Golden-loss tests: two steps of each trainer, run through ``zreward train`` on the tiny preset.

How the pinned values were produced: ``zreward train <method> ... max_steps=2`` with the settings of
``RUNS`` on the ``small_data`` set (synth seed 0, 6 prompts × 3 images, 32 px) and the untrained seed-1
tiny teacher, one intra-op thread, torch 2.13.0 CPU, transformers 4.57.6; the numbers were read from
``metrics.jsonl`` and reviewed before pinning:

* SFT / RISD start near the untrained model's values (CE ≈ ln 5 + the targets' entropy share; a KL of
  ~0.01 between two untrained models' near-uniform distributions) and go down after one update.
* GRPO / GDSO: the first inner update is on-policy (ratio 1, π_ref = π_θ since the reference resets every
  step here), so its policy term is 0 (zero-mean advantages over equal-length traces) and its KL 0; the
  last inner update shows a negative policy term, a positive KL and a clip fraction. GRPO's CE and gap are
  logged but not optimised; GDSO's total is ``policy + 0.5·CE + 0.5·gap``. Some w-side groups get
  advantage exactly 0: with λ_pt = λ_pw, a sample above its label but below the labelled gap has a reward
  that is flat in μ, so its group ties (checked by hand on these pairs).
* OPD: advantages ``log π_T − log π_S`` of two untrained models over a 768-token vocabulary are small
  and negative on average (the student's own samples are likelier under the student).

They must only change with a deliberate change of an algorithm (then re-derive and re-review them);
a change of sampling or reduction order also moves them. Tolerance (``GOLDEN_TOL``): 1e-4 relative plus
1e-4 absolute, torchtune's golden-loss tolerance. The values were pinned on an Intel Xeon; an AMD EPYC
(another GEMM kernel, so another reduction order) reproduces them to 1.2e-5 absolute at worst, on GRPO's
second ``loss_last``, a sum of near-cancelling terms (−0.0257) that a purely relative 1e-4 failed. A
changed formula moves them far more (the negative control below is checked at the same tolerance).
"""

from __future__ import annotations

import json

import pytest

from zreward_deploy.cli import main

ROLLOUT = [
    "batch_size=2",
    "group_size=2",
    "max_new_tokens=4",
    "inner_updates=2",
    "beta=0.04",
    "steps_per_iteration=1",
]
RUNS: dict[str, list[str]] = {
    "sft": ["batch_size=4"],
    "grpo": ROLLOUT,
    "gdso": ROLLOUT,
    "risd": ["batch_size=4", "teacher_max_new_tokens=4", "teacher_samples=2"],
    "opd": ["batch_size=4", "max_new_tokens=4"],
}

GOLDEN_TOL = {"rel": 1e-4, "abs": 1e-4}

GOLDEN: dict[str, list[dict[str, float]]] = {
    "sft": [
        {"loss": 1.6242234706878662, "mae": 1.2165393829345703, "grad_norm": 5.505555152893066},
        {"loss": 1.438941478729248, "mae": 1.0619111061096191, "grad_norm": 2.165389060974121},
    ],
    "grpo": [
        {
            "loss": 0.0,
            "kl": 0.0,
            "ce": 1.6008790731430054,
            "gap": 0.25977420806884766,
            "loss_last": -0.0506814606487751,
            "policy_last": -0.05101081356406212,
            "kl_last": 0.008233853615820408,
            "clip_fraction": 0.1875,
            "reward_mean": 0.7962091565132141,
            "advantage_abs_mean": 0.3991006016731262,
            "grad_norm": 2.0102200508117676,
        },
        {
            "ce": 1.5486263036727905,
            "gap": 0.3102353811264038,
            "loss_last": -0.025687212124466896,
            "kl_last": 0.0015452224761247635,
            "reward_mean": 0.6826061010360718,
            "advantage_abs_mean": 0.43863537907600403,
            "grad_norm": 1.7065281867980957,
        },
    ],
    "gdso": [
        {
            "loss": 0.9303266406059265,
            "policy": 0.0,
            "ce": 1.6008790731430054,
            "gap": 0.25977420806884766,
            "loss_last": 0.8024985790252686,
            "policy_last": -0.038911912590265274,
            "kl_last": 0.004389556124806404,
            "reward_mean": 0.7962091565132141,
            "grad_norm": 4.330183982849121,
        },
        {
            "loss": 1.002302885055542,
            "ce": 1.6810059547424316,
            "gap": 0.32363927364349365,
            "loss_last": 0.9621998071670532,
            "kl_last": 0.000685063423588872,
            "reward_mean": 0.6682442426681519,
            "grad_norm": 4.342281341552734,
        },
    ],
    "risd": [
        {
            "loss": 0.008091703057289124,
            "teacher_mu_mae": 0.10065250098705292,
            "grad_norm": 0.9029949307441711,
        },
        {"loss": 0.01796928234398365, "teacher_mu_mae": 0.222019225358963, "grad_norm": 0.993935763835907},
    ],
    "opd": [
        {
            "loss": -0.5072039365768433,
            "advantage_mean": -0.08087782561779022,
            "score_token_advantage": -0.00029394030570983887,
            "grad_norm": 0.9959384799003601,
        },
        {
            "loss": -0.3639258146286011,
            "advantage_mean": -0.06172852963209152,
            "score_token_advantage": -0.028140097856521606,
            "grad_norm": 0.7903736233711243,
        },
    ],
}


def run_cli(method: str, out, data, teacher=None, extra=()) -> list[dict]:
    args = [
        "train",
        method,
        f"data={data}",
        f"output_dir={out}",
        "resume=never",
        "max_steps=2",
        "progress=false",
    ]
    if method in ("risd", "opd"):
        args.append(f"teacher={teacher}")
    assert main([*args, *RUNS[method], *extra]) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", sorted(GOLDEN))
def test_two_steps_match_golden_values(method, small_data, teacher_dir, tmp_path, one_thread, capsys):
    rows = [r for r in run_cli(method, tmp_path / method, small_data, teacher_dir) if r["step"] > 0]
    assert [r["step"] for r in rows] == [1, 2]
    for row, expected in zip(rows, GOLDEN[method], strict=True):
        got = {k: row[k] for k in expected}
        assert got == pytest.approx(expected, **GOLDEN_TOL), f"{method} step {row['step']}"
    # the run ends with a loadable model directory and a summary on stdout
    assert (tmp_path / method / "model" / "config.json").is_file()
    assert "2 steps; model saved to" in capsys.readouterr().out


def test_golden_values_move_when_the_algorithm_does(small_data, tmp_path, one_thread):
    """Negative control: the pinned GDSO values are not insensitive to its hyperparameters."""
    rows = run_cli("gdso", tmp_path / "gdso", small_data, extra=["alpha_pt=0.3"])
    assert rows[0]["loss"] != pytest.approx(GOLDEN["gdso"][0]["loss"], **GOLDEN_TOL)
    assert rows[0]["loss"] != pytest.approx(GOLDEN["gdso"][0]["loss"], rel=1e-2)  # and not by a hair


def test_risd_cache_has_provenance_and_is_reused(small_data, teacher_dir, tmp_path, one_thread, capsys):
    out = tmp_path / "risd"
    run_cli("risd", out, small_data, teacher_dir)
    lines = [json.loads(x) for x in (out / "teacher_targets.jsonl").read_text().splitlines()]
    assert len(lines) == 12 * 4  # every (train record, dimension)
    first = lines[0]
    assert first["n"] == 2 and first["seed"] == 0 and first["teacher"] == str(teacher_dir.resolve())
    assert sum(first["probs"]) == pytest.approx(1.0, abs=1e-6)
    before = (out / "teacher_targets.jsonl").stat().st_mtime_ns
    run_cli("risd", out, small_data, teacher_dir)  # same provenance: reused, not regenerated
    assert (out / "teacher_targets.jsonl").stat().st_mtime_ns == before
    # another n: the cache no longer matches, and the run says how to proceed instead of mixing targets
    args = [
        "train",
        "risd",
        f"data={small_data}",
        f"output_dir={out}",
        f"teacher={teacher_dir}",
        "teacher_samples=1",
    ]
    assert main([*args, "max_steps=1", "resume=never"]) == 2
    assert "rebuild_cache=true" in capsys.readouterr().err


def test_cli_help_and_print_config(capsys):
    assert main(["train", "gdso", "--help-config"]) == 0
    text = capsys.readouterr().out
    assert "alpha_pt" in text and "K_gdso" in text
    assert main(["train", "risd", "data=d", "teacher=t", "teacher_samples=3", "--print-config"]) == 0
    assert "teacher_samples: 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sft", "data=d", "learning_rat=1"], "did you mean 'learning_rate'"),
        (["sft", "data=d", "max_steps=ten"], "must be an integer"),
        (["grpo", "data=d", "alpha_pw=0.5"], "GRPO is GDSO with α = 0"),
        (["gdso", "data=d", "normalization=sum"], "normalization"),
        (["risd", "data=d"], "teacher"),
        (["sft", "data=d", "oops"], "key=value"),
    ],
)
def test_cli_rejects_bad_configs(args, message, capsys):
    assert main(["train", *args, "--print-config"]) == 2
    assert message in capsys.readouterr().err
