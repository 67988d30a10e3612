"""SFT and RISD on judgements without scores (training/student_loop.py, docs/training.md "Judgements"):
the pairwise loss by hand, its gradient moving the student's μ the judged way, preference-only and mixed
runs, gradient accumulation and resume with the judgements' own data order, and preference_weight=0
giving the plain trainer (the golden tests pin the defaults on data without judgements).

Whether a preference-only student learns beyond chance is measured in docs/results.md ("Preferences
without scores"): on a CPU it needs a few hundred steps on 64 px images, more than this file's budget.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from zreward_deploy.cli import main
from zreward_deploy.data import Preference, load_split, preferences_from_scores, write_preference_dataset
from zreward_deploy.data.preferences import preference_line

COMMON = ["progress=false", "learning_rate=1e-3", "adam_epsilon=1e-6", "model=preset:tiny"]


def rows_of(out) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def weights_of(out) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def assert_same_run(a, b, loss_tol: float = 1e-6, weight_tol: float = 5e-6) -> None:
    """Losses to ``loss_tol`` and weights to ``weight_tol`` (the accumulation tolerances of
    tests/training/test_scale_options.py, which say why adam_epsilon=1e-6)."""
    rows_a, rows_b = rows_of(a), rows_of(b)
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert (
            abs(ra["loss"] - rb["loss"]) <= loss_tol and abs(ra["preference"] - rb["preference"]) <= loss_tol
        )
    wa, wb = weights_of(a), weights_of(b)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=weight_tol, msg=k)


def train(*args: str) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order, as the golden tests
    try:
        assert main(["train", *args]) == 0
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pref_only(tmp_path_factory, small_data):
    """``small_data`` as judgements only (realism and overall, from the scores; records without scores)."""
    out = tmp_path_factory.mktemp("pref") / "data"
    write_preference_dataset(small_data, out, ["realism", "overall"])
    return out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, small_data):
    """``small_data`` (scores) plus a train preference file of realism judgements."""
    out = tmp_path_factory.mktemp("mixed") / "data"
    shutil.copytree(small_data, out)
    prefs = preferences_from_scores(load_split(out, "train"), ["realism"])
    (out / "train.preferences.jsonl").write_text("".join(preference_line(p) + "\n" for p in prefs))
    return out


# --------------------------------------------------------------------------------------------------
# The loss and its gradient
# --------------------------------------------------------------------------------------------------


def test_preference_loss_by_hand():
    from zreward_deploy.training.losses import bradley_terry_loss, preference_loss

    a, b = torch.tensor([4.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 3.0])
    # t = 1 is Bradley–Terry: softplus(−Δ); Δ = 2: ln(1 + e^−2) = 0.126928; Δ = −2: 2.126928
    assert float(preference_loss(a[:2], b[:2], 1.0)) == pytest.approx(float(bradley_terry_loss(a[:2], b[:2])))
    assert float(preference_loss(a[:1], b[:1], 0.0)) == pytest.approx(2.126928, abs=1e-6)  # b preferred
    # a tie at Δ = 0: ln 2; at Δ = 1: ½ softplus(−1) + ½ softplus(1) = ½ (0.313262 + 1.313262)
    assert float(preference_loss(a[2:], b[2:], 0.5)) == pytest.approx(math.log(2), abs=1e-7)
    assert float(preference_loss(torch.tensor([1.0]), torch.tensor([0.0]), 0.5)) == pytest.approx(
        0.813262, abs=1e-6
    )
    # mask: the mean over the unmasked judgements only; all masked: 0, attached
    t = torch.tensor([1.0, 0.0, 0.5])
    masked = preference_loss(a, b, t, torch.tensor([True, False, False]))
    assert float(masked) == pytest.approx(0.126928, abs=1e-6)
    mu = a.clone().requires_grad_()
    preference_loss(mu, b, t, torch.zeros(3, dtype=torch.bool)).backward()
    assert mu.grad is not None and not mu.grad.any()
    # gradient in μ_a: σ(Δ) − t, over P = 3: (σ(2) − 1, σ(−2) − 0, σ(0) − ½) / 3
    mu = a.clone().requires_grad_()
    preference_loss(mu, b, t).backward()
    sig = torch.sigmoid(torch.tensor([2.0, -2.0, 0.0]))
    torch.testing.assert_close(mu.grad, (sig - t) / 3)
    x, y = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    target = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda u, v: preference_loss(u, v, target), (x.requires_grad_(), y.requires_grad_())
    )


def _gap(forward, inputs, batch, weights) -> float:
    """μ_a − μ_b of the batch's one judgement."""
    from zreward_deploy.training.student_loop import judged_means

    with torch.no_grad():
        mu_a, mu_b = judged_means(forward("student", **inputs).mean, batch, weights)
    return float(mu_a - mu_b)


def test_the_pairwise_term_moves_the_students_mu_the_judged_way(small_data, tiny):
    """One SGD step on each judgement alone, through the trainer's own batch and term: "a" widens
    μ_a − μ_b, "b" narrows it, a tie shrinks |μ_a − μ_b|; on "overall" through the reward's weights."""
    from zreward_deploy.training.data import PreferenceData, StudentData, joint_batch
    from zreward_deploy.training.models import TrainingForward
    from zreward_deploy.training.student_loop import preference_term

    base, processor = tiny  # copied below, never changed
    records = load_split(small_data, "train")
    dims = processor.config.get_rubric().names
    data = StudentData(records, processor, dims, require_targets=False)
    suffix_ids = processor.suffix_ids(dims)
    r = [x.id for x in records]
    for judgement in ("a", "b", "tie"):
        for dim in ("realism", "overall"):
            prefs = PreferenceData([Preference("j", r[0], r[1], dim, judgement)], data, processor)
            model = copy.deepcopy(base).train()
            forward = TrainingForward(model, processor)
            batch = joint_batch(data, [2], prefs, [0])  # one labelled-less item beside the judgement
            inputs = {"pixel_values": batch.pixel_values, "input_ids": batch.input_ids,
                      "attention_mask": batch.attention_mask, "suffix_ids": suffix_ids}  # fmt: skip

            before = _gap(forward, inputs, batch, prefs.weights)
            loss_sum, _, _ = preference_term(forward("student", **inputs), batch, prefs.weights)
            loss_sum.backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p -= 0.05 * p.grad
            after = _gap(forward, inputs, batch, prefs.weights)
            if judgement == "a":
                assert after > before, (dim, before, after)
            elif judgement == "b":
                assert after < before, (dim, before, after)
            else:
                assert abs(after) < abs(before), (dim, before, after)


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


def test_preference_only_sft(tmp_path, pref_only):
    out = tmp_path / "run"
    train(
        "sft",
        f"data={pref_only}",
        f"output_dir={out}",
        *COMMON,
        "max_steps=2",
        "batch_size=4",
        "eval_at_end=true",
    )
    rows = rows_of(out)
    assert len(rows) == 2 and all("ce" not in r and r["judgements"] == 4 for r in rows)
    assert all(r["loss"] == r["preference"] for r in rows)  # λ = 1, no items
    assert rows[0]["preference"] == pytest.approx(math.log(2), abs=0.1)  # an untrained model: Δ ≈ 0
    record = json.loads((out / "model" / "config.json").read_text())["training"]
    assert record["dimensions"] == ["alignment", "realism", "aesthetics", "plausibility"]  # overall
    assert "pref_hpa" in record["metrics"] and record["metrics"]["pref_pairs"] > 0
    # only realism trained: the overall judgements are left out, with one warning line
    only = tmp_path / "realism"
    train(
        "sft",
        f"data={pref_only}",
        f"output_dir={only}",
        *COMMON,
        "max_steps=1",
        "batch_size=4",
        "dimensions=[realism]",
    )
    record = json.loads((only / "model" / "config.json").read_text())["training"]
    assert record["dimensions"] == ["realism"]


def test_judgement_accumulation_equals_the_big_batch(tmp_path, mixed, pref_only):
    for name, data, extra in (("mixed", mixed, ["preference_batch_size=4", "preference_weight=0.5"]),
                              ("only", pref_only, [])):  # fmt: skip
        runs = []
        for k in (1, 2):
            out = tmp_path / f"{name}{k}"
            train("sft", f"data={data}", f"output_dir={out}", *COMMON, "max_steps=2", "batch_size=4",
                  f"gradient_accumulation_steps={k}", *extra)  # fmt: skip
            runs.append(out)
        assert_same_run(*runs)
    rows = rows_of(tmp_path / "mixed1")
    # the logged loss is the CE plus λ times the pairwise term, each a mean over the global batch
    for r in rows:
        assert r["loss"] == pytest.approx(r["ce"] + 0.5 * r["preference"], abs=1e-6)
        assert r["entries"] > 0 and r["judgements"] == 4


def test_weight_zero_is_plain_sft(tmp_path, mixed, small_data):
    plain, off = tmp_path / "plain", tmp_path / "off"
    train("sft", f"data={small_data}", f"output_dir={plain}", *COMMON, "max_steps=2", "batch_size=4")
    train(
        "sft",
        f"data={mixed}",
        f"output_dir={off}",
        *COMMON,
        "max_steps=2",
        "batch_size=4",
        "preference_weight=0",
    )
    timing = {"items_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows_of(off)] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows_of(plain)
    ]
    wa, wb = weights_of(plain), weights_of(off)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_continues_the_judgements_order(tmp_path, mixed):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    base = [f"data={mixed}", *COMMON, "batch_size=4", "preference_batch_size=2"]
    train("sft", *base, f"output_dir={straight}", "max_steps=3")
    train("sft", *base, f"output_dir={resumed}", "max_steps=2")
    state = json.loads((resumed / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert state["samplers"]["preferences"]["offset"] == 4  # two steps of two judgements
    train("sft", *base, f"output_dir={resumed}", "max_steps=3")
    assert_same_run(straight, resumed, loss_tol=1e-6, weight_tol=1e-6)


def test_risd_adds_the_pairwise_term(tmp_path, mixed, teacher_dir):
    out = tmp_path / "risd"
    train("risd", f"data={mixed}", f"output_dir={out}", f"teacher={teacher_dir}", *COMMON, "max_steps=1",
          "batch_size=4", "teacher_max_new_tokens=2", "dimensions=[realism]")  # fmt: skip
    (row,) = rows_of(out)
    assert row["loss"] == pytest.approx(row["kl"] + row["preference"], abs=1e-6) and row["judgements"] == 4


def test_refusals(tmp_path, pref_only, caplog, capsys):
    from zreward_deploy.training.config import ConfigError
    from zreward_deploy.training.sft import SFTConfig

    with pytest.raises(ConfigError, match="preference_batch_size"):
        SFTConfig(data="d", batch_size=4, gradient_accumulation_steps=2, preference_batch_size=3)
    with pytest.raises(ConfigError, match="preference_weight"):
        SFTConfig(data="d", preference_weight=-1.0)
    # judgements only, none on the chosen dimension: nothing to train, said in one line
    out = tmp_path / "none"
    args = [
        "train",
        "sft",
        f"data={pref_only}",
        f"output_dir={out}",
        *COMMON,
        "max_steps=1",
        "dimensions=[alignment]",
    ]
    with caplog.at_level(logging.WARNING, logger="zreward_deploy.training"):
        assert main(args) == 2
    assert "no record has a label on ['alignment'] and no judgement" in capsys.readouterr().err
