"""TrainConfig's options for real model sizes (docs/training.md, "Real model sizes: memory and precision
options"): gradient accumulation equals the big batch, bf16 mixed precision, LoRA through peft; on the
package's tiny preset and on a native one (Qwen2.5-VL).

**Accumulation tolerance.** ``batch_size=4`` with ``gradient_accumulation_steps=2`` against
``batch_size=4`` in one pass, 2 steps: losses to 1e-6 absolute (measured: at most 3.2e-7), weights to
5e-6 absolute (measured: at most 1.4e-6, a Qwen2.5-VL patch-embedding weight after GDSO; 3e-7 for SFT).
The micro-batches compute the same sums in another order and with other batch shapes, so the gradients
agree to fp32 rounding, about 1e-7 of the largest terms summed into them. Adam then divides each
gradient by its own magnitude plus ε: a gradient that is mathematically 0 (attention key biases; an
embedding row no token uses) is pure rounding noise, which the default ε = 1e-8 turns into updates of
up to the learning rate in either direction (measured: 3.8e-5 at lr 1e-3). These runs use
``adam_epsilon=1e-6``, so such noise moves a weight by at most ~1e-3 of the learning rate, and the
weight tolerance is 2.5e-3 of the two steps' total movement (2 × lr = 2e-3). GDSO also runs with
``advantage_eps=1.0``: untrained models' rewards differ by ~1e-4 within a group, and dividing by their std
(+ 1e-4) turns rounding in μ into advantage differences of 1e-3 relative, which Adam carries into the
weights the same way. The negative control (a mean per micro-batch) moves the weights by far more than
the tolerance. The rollout methods' micro-batches here hold equally long traces (untrained models never
stop before ``max_new_tokens``), so their per-token and per-sequence weighting is tested on its own, on
sequences of different lengths (``test_sequence_shares_split_the_policy_losses_exactly``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from zreward_deploy.cli import main
from zreward_deploy.training.losses import NORMALIZATIONS

KINDS = {"tiny": "preset:tiny", "native": "preset:tiny-qwen2_5_vl"}
COMMON = ["progress=false", "max_steps=2", "learning_rate=1e-3", "adam_epsilon=1e-6"]
METHODS = {
    "sft": ["batch_size=4"],
    "gdso": [
        "batch_size=4", "group_size=2", "max_new_tokens=4", "inner_updates=2", "beta=0.04",
        "steps_per_iteration=1", "advantage_eps=1.0", "normalization=token_mean",
    ],
    "opd": ["batch_size=4", "max_new_tokens=4"],
}  # fmt: skip
needs_peft = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="LoRA needs peft (the lora extra)"
)
LOSS_TOL = 1e-6
WEIGHT_TOL = 5e-6
TIMING = {"items_per_s", "pairs_per_s", "tokens_per_s", "sample_time_frac"}


def rows_of(out) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows if "loss" in r]


def weights_of(model_dir) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def sparse_data(tmp_path_factory, small_data):
    """``small_data`` with labels removed unevenly (record i keeps i % 4 + 1 of its 4 dimensions), so the
    micro-batches of a batch hold different numbers of labelled entries: a per-micro-batch mean would then
    weigh entries unequally, and only the whole batch's count gives the big batch's update."""
    root = tmp_path_factory.mktemp("sparse") / "data"
    shutil.copytree(small_data, root)
    lines = (root / "train.jsonl").read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        record = json.loads(line)
        keep = list(record["scores"])[: i % 4 + 1]
        record["scores"] = {k: v for k, v in record["scores"].items() if k in keep}
        record["annotations"] = {k: v for k, v in record["annotations"].items() if k in keep}
        out.append(json.dumps(record))
    (root / "train.jsonl").write_text("\n".join(out) + "\n")
    return root


@pytest.fixture(scope="module")
def native_teacher(tmp_path_factory):
    """An untrained Qwen2.5-VL preset (seed 1) saved as a native folder: the OPD teacher of a native
    student (teacher and student must share the tokenizer)."""
    from zreward_deploy.native import build_native_preset, save_native

    model, processor = build_native_preset("qwen2_5_vl", seed=1)
    path = tmp_path_factory.mktemp("native_teacher")
    save_native(model, processor, path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sparse_data, teacher_dir, native_teacher):
    """``trained(kind, method, *extra)`` -> output folder of a 2-step run (memoised: the one-pass runs are
    shared by the accumulation and the bf16 tests), with one intra-op thread."""
    root = tmp_path_factory.mktemp("scale_runs")
    done: dict[tuple, object] = {}
    teachers = {"tiny": teacher_dir, "native": native_teacher}

    def run(kind: str, method: str, *extra: str):
        key = (kind, method, *extra)
        if key not in done:
            out = root / f"run{len(done)}"
            args = ["train", method, f"data={sparse_data}", f"output_dir={out}", f"model={KINDS[kind]}"]
            args += [*COMMON, *METHODS[method], *extra]
            if method == "opd":
                args.append(f"teacher={teachers[kind]}")
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                assert main(args) == 0
            finally:
                torch.set_num_threads(before)
            done[key] = out
        return done[key]

    return run


def assert_same_training(a, b, loss_tol: float = LOSS_TOL, weight_tol: float = WEIGHT_TOL) -> None:
    rows_a, rows_b = rows_of(a), rows_of(b)
    assert len(rows_a) == len(rows_b) == 2
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert abs(ra["loss"] - rb["loss"]) <= loss_tol, (ra, rb)
    wa, wb = weights_of(a / "model"), weights_of(b / "model")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=weight_tol, msg=k)


def max_weight_difference(a, b) -> float:
    wa, wb = weights_of(a / "model"), weights_of(b / "model")
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


# --------------------------------------------------------------------------------------------------
# Gradient accumulation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_accumulation_equals_the_big_batch(trained, kind, method):
    one_pass = trained(kind, method)
    accumulated = trained(kind, method, "gradient_accumulation_steps=2")
    assert_same_training(one_pass, accumulated)
    # the metrics row still describes the whole update (all entries of the batch, one grad norm)
    for ra, rb in zip(rows_of(one_pass), rows_of(accumulated), strict=True):
        assert ra.keys() == rb.keys()
        assert abs(ra["grad_norm"] - rb["grad_norm"]) <= 1e-5 * ra["grad_norm"]
        if method == "sft":
            assert ra["entries"] == rb["entries"] and abs(ra["mae"] - rb["mae"]) <= 1e-6


def test_a_mean_per_micro_batch_is_not_the_big_batch(trained, monkeypatch):
    """Negative control: SFT whose micro-batches hold different numbers of labelled entries, each
    micro-batch's loss its own mean divided by the number of micro-batches (the usual hand-written
    accumulation) instead of its sum over the whole batch's count: other weights, by far more than the
    tolerance the accumulation test allows."""
    from zreward_deploy.training import student_loop

    counts = []
    real_rows = student_loop.batch_rows

    def recording_rows(batch, rows):
        micro = real_rows(batch, rows)
        counts.append(micro.mask.sum())
        return micro

    monkeypatch.setattr(student_loop, "batch_rows", recording_rows)
    monkeypatch.setattr(
        student_loop, "micro_batch_loss", lambda loss_sum, n, world: loss_sum / counts[-1].clamp(min=1) / 2
    )
    wrong = trained("tiny", "sft", "gradient_accumulation_steps=2", "seed=0")  # not the memoised run
    assert len(set(int(c) for c in counts)) > 1  # the micro-batches' counts differ
    assert max_weight_difference(trained("tiny", "sft"), wrong) > 20 * WEIGHT_TOL


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_sequence_shares_split_the_policy_losses_exactly(normalization):
    """GDSO's and OPD's weighting: micro-batches of sequences of different lengths (one with no valid
    token), each policy loss (clipped ratio and KL; OPD's) times its :func:`sequence_share`, sum to the
    whole batch's loss, and so do their gradients. Weighting by rows instead does not (for token_mean and
    sequences without tokens)."""
    from zreward_deploy.training.losses import opd_loss, policy_gradient_loss
    from zreward_deploy.training.rollouts import sequence_share

    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([7, 1, 3, 0, 5, 2])
    mask = torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)
    logp = (-torch.rand(6, 7, generator=g)).requires_grad_()
    old, ref = -torch.rand(6, 7, generator=g), -torch.rand(6, 7, generator=g)
    advantages = torch.randn(6, generator=g)
    token_advantages = torch.randn(6, 7, generator=g)
    parts = (slice(0, 2), slice(2, 4), slice(4, 6))

    def pg(rows: slice) -> torch.Tensor:
        return policy_gradient_loss(logp[rows], advantages[rows], mask[rows], old_logp=old[rows],
                                    ref_logp=ref[rows], beta=0.1, normalization=normalization).loss  # fmt: skip

    def opd(rows: slice) -> torch.Tensor:
        return opd_loss(logp[rows], token_advantages[rows], mask[rows])

    for loss, norm in ((pg, normalization), (opd, "sequence_mean")):
        whole = loss(slice(None))
        (grad_whole,) = torch.autograd.grad(whole, logp)
        split = sum(sequence_share(mask[r], mask, norm) * loss(r) for r in parts)
        (grad_split,) = torch.autograd.grad(split, logp)
        torch.testing.assert_close(split, whole, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad_split, grad_whole, rtol=1e-6, atol=1e-7)
        by_rows = sum(loss(r) / len(parts) for r in parts)
        if norm == "token_mean" or loss is pg:  # row weights ignore the empty sequence and the lengths
            assert abs(float(by_rows.detach()) - float(whole.detach())) > 1e-3


def test_accumulation_steps_must_split_the_batch(capsys):
    from zreward_deploy.training.config import ConfigError
    from zreward_deploy.training.sft import SFTConfig

    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps.*does not divide batch_size 6"):
        SFTConfig(data="d", batch_size=6, gradient_accumulation_steps=4)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        SFTConfig(data="d", gradient_accumulation_steps=0)
    assert main(["train", "sft", "data=d", "batch_size=4", "gradient_accumulation_steps=3"]) == 2
    assert "gradient_accumulation_steps" in capsys.readouterr().err


@needs_peft
def test_accumulation_may_change_on_resume_but_not_with_lora_dropout(trained, sparse_data, tmp_path):
    """Changing ``gradient_accumulation_steps`` on resume is allowed (the update is the same to fp32
    rounding, as the test above shows): 1 step in one pass, then a resume with 2 micro-batches, ends
    where 2 steps in one pass end. With ``lora_dropout > 0`` the masks are drawn per micro-batch, so the
    change is refused."""
    from zreward_deploy.training.run_rules import config_changes
    from zreward_deploy.training.sft import SFTConfig

    out = tmp_path / "run"
    base = ["train", "sft", f"data={sparse_data}", f"output_dir={out}", *COMMON, *METHODS["sft"]]
    assert main([*base, "max_steps=1"]) == 0
    assert main([*base, "max_steps=2", "gradient_accumulation_steps=2"]) == 0
    assert_same_training(trained("tiny", "sft"), out)

    saved = {"method": "sft", **SFTConfig(data="d", lora_r=4, lora_dropout=0.1).to_dict()}
    changed = SFTConfig(data="d", lora_r=4, lora_dropout=0.1, gradient_accumulation_steps=2)
    assert config_changes(changed, saved) == {"gradient_accumulation_steps": (1, 2)}
    assert config_changes(SFTConfig(data="d", gradient_accumulation_steps=2), {**saved, "lora_r": 0,
                          "lora_dropout": 0.0}) == {}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# bf16 mixed precision
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_trains_close_to_fp32_with_fp32_weights_and_state(trained, kind):
    """bf16 autocast of the backbone: the losses stay within 1e-2 relative of fp32's (bf16 keeps 8
    significant bits, 4e-3 relative per rounding; measured: at most 3.5e-4 on both model kinds and both
    transformers lines), yet differ from them (so the autocast ran); the weights, the optimizer state and
    the saved model are fp32, and the model loads."""
    from zreward_deploy.scoring import Scorer

    fp32 = trained(kind, "sft")
    bf16 = trained(kind, "sft", "mixed_precision=bf16", "save_every=1")
    losses32 = [r["loss"] for r in rows_of(fp32)]
    losses16 = [r["loss"] for r in rows_of(bf16)]
    assert all(torch.isfinite(torch.tensor(losses16)))
    assert losses16 != losses32
    for a, b in zip(losses32, losses16, strict=True):
        assert abs(a - b) <= 1e-2 * abs(a)
    weights = weights_of(bf16 / "model")
    assert {v.dtype for v in weights.values()} == {torch.float32}
    optimizer = torch.load(bf16 / "checkpoints" / "step_00000002" / "optimizer.pt", weights_only=True)
    moments = [t for s in optimizer["state"].values() for t in s.values() if t.ndim > 0]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    scorer = Scorer.from_pretrained(bf16 / "model")
    assert all(p.dtype == torch.float32 for p in scorer.model.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocasts_the_backbone_and_keeps_the_head_in_fp32(kind):
    """A linear layer inside the language model computes in bf16 under ``mixed_precision=bf16`` (and in
    fp32 without); the score head's log-probabilities and the gradients stay fp32."""
    from zreward_deploy.training.models import TrainingForward, load_model

    model, processor = load_model(KINDS[kind])
    layer = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    seen = []
    layer.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    ids, mask = processor.pad([processor.prompt_ids("a cat"), processor.prompt_ids("two red dogs")])
    inputs = {
        "pixel_values": processor.preprocess_tensor(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))),
        "input_ids": ids,
        "attention_mask": mask,
        "suffix_ids": processor.suffix_ids(["realism", "alignment"]),
    }  # fmt: skip
    out = {}
    for precision in ("no", "bf16"):
        out[precision] = TrainingForward(model, processor, precision)("student", **inputs)
        out[precision].logprobs.sum().backward()
        assert out[precision].logprobs.dtype == torch.float32
        assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
        model.zero_grad()
    assert seen == [torch.float32, torch.bfloat16]
    difference = (out["no"].logprobs - out["bf16"].logprobs).abs().max()
    assert 0 < difference < 5e-2
    assert not torch.is_autocast_enabled("cpu")  # the hooks left the autocast they entered


# --------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------

LORA = ["lora_r=4", "lora_alpha=8", "learning_rate=1e-2", "lr_scheduler=cosine", "warmup_steps=1"]


@needs_peft
def test_lora_trains_only_the_adapters_and_leaves_the_base_bit_identical():
    """Only the adapters on the language model's projections require gradients and enter the optimizer;
    after AdamW steps with weight decay, every other tensor (vision tower, projector, embeddings, norms,
    lm_head, the adapted layers' base weights) is bit-identical, while the adapters moved."""
    from zreward_deploy.training.loop import apply_memory_options, build_optimizer
    from zreward_deploy.training.models import TrainingForward, load_model
    from zreward_deploy.training.sft import SFTConfig

    for spec in KINDS.values():
        cfg = SFTConfig(data="d", lora_r=4, weight_decay=0.1, learning_rate=1e-2)
        model, processor = load_model(spec)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        apply_memory_options(model, cfg)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
        assert not any("vision" in n or "visual" in n or "lm_head" in n for n in trainable)
        assert {n.split(".")[-4] for n in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"}  # fmt: skip
        optimizer = build_optimizer(model, cfg)
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
        ids, mask = processor.pad([processor.prompt_ids("a cat")])
        for _ in range(2):
            out = TrainingForward(model, processor)(
                "student", pixel_values=processor.preprocess_tensor(torch.rand(1, 3, 32, 32)), input_ids=ids,
                attention_mask=mask, suffix_ids=processor.suffix_ids(["realism"]),
            )  # fmt: skip
            (out.mean.sum() + out.logprobs.sum()).backward()
            optimizer.step()
            optimizer.zero_grad()
        after = model.state_dict()
        for name, value in before.items():
            key = name if name in after else name.replace(".weight", ".base_layer.weight").replace(
                ".bias", ".base_layer.bias")  # fmt: skip
            assert torch.equal(after[key], value), name
        assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in after.items() if ".lora_B." in k)


@needs_peft
@pytest.mark.parametrize("kind", KINDS)
def test_lora_resume_continues_exactly(kind, sparse_data, tmp_path, one_thread):
    """A LoRA run of 2 steps, and one of 1 step resumed to 2 (its adapters, optimizer and schedule from
    the checkpoint, the frozen base rebuilt from ``model``): the same metrics and final weights."""
    base = ["train", "sft", f"data={sparse_data}", f"model={KINDS[kind]}", "progress=false", "batch_size=4",
            "save_every=1", *LORA]  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*base, f"output_dir={straight}", "max_steps=2"]) == 0
    assert main([*base, f"output_dir={resumed}", "max_steps=1"]) == 0
    assert main([*base, f"output_dir={resumed}", "max_steps=2"]) == 0
    assert rows_of(straight) == rows_of(resumed)
    for a, b in ((straight / "model", resumed / "model"), *[
        (straight / "checkpoints" / "step_00000002", resumed / "checkpoints" / "step_00000002")
    ]):  # fmt: skip
        wa, wb = weights_of(a), weights_of(b)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-7, msg=k)


@needs_peft
@pytest.mark.parametrize("kind", KINDS)
def test_lora_final_model_is_merged_and_scores_like_the_adapted_model(kind, trained, monkeypatch, tmp_path):
    """``output_dir/model`` is an ordinary (merged) model folder: no adapter weights, loadable by
    ``Scorer.from_pretrained`` and exported (and validated) by the ONNX exporter with peft unimportable,
    and its scores equal those of the adapted model
    (the base with the final checkpoint's adapters) to fp32 rounding (1e-5: ``x (W + s B A)ᵀ`` against
    ``x Wᵀ + s (x Aᵀ) Bᵀ``). Layers without adapters are the base's, bit for bit."""
    from zreward_deploy.scoring import Scorer
    from zreward_deploy.training.checkpoints import _load_adapter
    from zreward_deploy.training.loop import apply_memory_options
    from zreward_deploy.training.lora import ADAPTER_FILE, merged_state_dict
    from zreward_deploy.training.models import TrainingForward, load_model
    from zreward_deploy.training.sft import SFTConfig

    out = trained(kind, "sft", *LORA)
    cfg = SFTConfig.from_sources(out / "config.yaml")
    adapted, processor = load_model(cfg.model, seed=cfg.seed)
    base = {k: v.clone() for k, v in adapted.state_dict().items()}
    apply_memory_options(adapted, cfg)
    _load_adapter(adapted, out / "checkpoints" / "step_00000002" / ADAPTER_FILE)
    adapted.eval()

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError from here on
    with pytest.raises(ImportError):
        import peft  # noqa: F401
    saved = weights_of(out / "model")
    assert not any("lora" in k or "base_layer" in k for k in saved)
    assert "peft" not in (out / "model" / "config.json").read_text()
    scorer = Scorer.from_pretrained(out / "model")
    merged = merged_state_dict(adapted, adapted.state_dict())
    loaded = scorer.model.state_dict()
    adapted_layers = {
        k.replace(".base_layer.", ".") for k in adapted.state_dict() if ".base_layer.weight" in k
    }
    for k, v in base.items():
        if k not in adapted_layers and k in loaded:
            assert torch.equal(loaded[k], v), k
    for k in adapted_layers:
        assert not torch.equal(merged[k], base[k]) and torch.equal(loaded[k], merged[k])

    ids, mask = processor.pad([processor.prompt_ids("a cat"), processor.prompt_ids("two red dogs")])
    inputs = {
        "pixel_values": processor.preprocess_tensor(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))),
        "input_ids": ids,
        "attention_mask": mask,
        "suffix_ids": processor.suffix_ids(["realism", "alignment"]),
    }  # fmt: skip
    with torch.no_grad():
        ours = TrainingForward(adapted, processor)("student", **inputs).probs
        theirs = scorer.model.eval()(**inputs).probs
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    pytest.importorskip("onnxruntime", reason="the exporter check needs the onnx extra")
    from zreward_deploy.export.onnx import export_onnx

    assert export_onnx(out / "model", tmp_path / "onnx")["validation"]["passed"]  # still without peft


def test_lora_without_peft_names_the_extra(monkeypatch):
    from zreward_deploy.training.config import ConfigError
    from zreward_deploy.training.lora import import_peft
    from zreward_deploy.training.sft import SFTConfig

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ConfigError, match=r"'lora_r'.*peft.*pip install 'zreward-deploy\[lora\]'"):
        SFTConfig(data="d", lora_r=8)
    with pytest.raises(ConfigError, match=r"zreward-deploy\[lora\]"):
        import_peft()
    SFTConfig(data="d")  # lora_r=0 needs no peft


@needs_peft
def test_lora_and_precision_settings_are_checked():
    from zreward_deploy.training.config import ConfigError
    from zreward_deploy.training.lora import apply_lora
    from zreward_deploy.training.models import load_model
    from zreward_deploy.training.sft import SFTConfig

    for bad, field in (
        ({"mixed_precision": "fp16"}, "mixed_precision"), ({"lora_r": -1}, "lora_r"),
        ({"lora_alpha": 0.0}, "lora_alpha"), ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lora_target_modules": []}, "lora_target_modules"),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=f"'{field}'"):
            SFTConfig(data="d", **bad)
    model, _ = load_model("preset:tiny")
    with pytest.raises(ConfigError, match=r"'lora_target_modules'.*match no linear layer.*'q_proj'"):
        apply_lora(model, SFTConfig(data="d", lora_r=4, lora_target_modules=["fc1"]))  # the tower's only


# --------------------------------------------------------------------------------------------------
# Two processes (DDP over gloo): accumulation with no_sync
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_with_accumulation_match_one_pass(trained, sparse_data, tmp_path):
    """2 processes × 2 micro-batches of 1 item (the first backward without DDP's all-reduce, the second
    with it) train like one process with the whole batch of 4, to the accumulation tolerance; a batch
    whose per-process share the micro-batches do not divide is refused naming the field."""
    from .test_multiprocess import _free_port, _launch_two_processes

    common = ["train", "sft", f"data={sparse_data}", "model=preset:tiny", *COMMON, *METHODS["sft"]]
    _launch_two_processes(
        [*common, f"output_dir={tmp_path / 'two'}", "gradient_accumulation_steps=2"], tmp_path
    )
    assert_same_training(trained("tiny", "sft"), tmp_path / "two")

    refused = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "zreward_deploy.cli", *common, "batch_size=6",
         "gradient_accumulation_steps=2", f"output_dir={tmp_path / 'refused'}"],
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}, cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode != 0
    assert (
        "'gradient_accumulation_steps': 2 does not divide the 3 items each of 2 processes" in refused.stderr
    )
