"""Training refuses to save garbage, and resume and checkpoint loading survive damage.

* Config: every float option must be finite (``learning_rate=inf`` used to train an all-NaN model).
* A NaN/inf loss or gradient norm stops the run with :class:`NonFiniteLossError` before the optimizer
  applies it, naming the step and the last good checkpoint; nothing non-finite is saved.
* Resume: a cut last line of ``metrics.jsonl`` is dropped, a missing RNG file is reported, ``latest``
  naming a lost checkpoint falls back to the newest complete one, and damaged checkpoint files are an
  :class:`InvalidModelError` naming the file.
* Data: a training image that does not decode (truncated pixel data passes ``zreward data check``) is
  skipped, counted and logged instead of stopping the run at whichever step draws it.

Every run is the SFT trainer on the tiny preset (the shared loop, checkpoint code and data view are what
is tested), with the step budgets of the other trainer tests.
"""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from zreward_deploy.cli import main
from zreward_deploy.errors import InvalidModelError, ZRewardInputError
from zreward_deploy.training.checkpoints import CHECKPOINT_DIR, LATEST_FILE
from zreward_deploy.training.config import ConfigError, NonFiniteLossError
from zreward_deploy.training.gdso import GDSOConfig
from zreward_deploy.training.loop import TrainLoop
from zreward_deploy.training.metrics_log import MetricsWriter, read_metrics
from zreward_deploy.training.models import load_model
from zreward_deploy.training.risd import RISDConfig
from zreward_deploy.training.run import start_run
from zreward_deploy.training.sft import SFTConfig

TIMING_KEYS = {"items_per_s", "pairs_per_s", "tokens_per_s", "sample_time_frac"}
SFT = ["batch_size=4", "progress=false"]


def train(out, data, *extra: str, method: str = "sft") -> int:
    """``zreward train <method>`` (SFT by default); returns the exit status."""
    return main(["train", method, f"data={data}", f"output_dir={out}", *SFT, *extra])


def rows(out) -> list[dict]:
    """metrics.jsonl without the timing columns (which differ between runs)."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(out)]


def checkpoint(out, step: int):
    return out / CHECKPOINT_DIR / f"step_{step:08d}"


def warnings_of(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


@pytest.fixture(scope="module")
def straight(small_data, tmp_path_factory):
    """An uninterrupted 3-step SFT run with a checkpoint after every step: the reference of the resumes."""
    out = tmp_path_factory.mktemp("straight")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (
            train(out, small_data, "max_steps=3", "save_every=1", "keep_checkpoints=3", "resume=never") == 0
        )
    finally:
        torch.set_num_threads(before)
    return out


def copy_run(src, dst, upto: int):
    """``dst``: the state ``src`` had right after saving checkpoint ``upto`` (a run killed then)."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "model")
    for step in range(upto + 1, 10):
        shutil.rmtree(checkpoint(dst, step), ignore_errors=True)
    (dst / CHECKPOINT_DIR / LATEST_FILE).write_text(checkpoint(dst, upto).name)
    kept = [
        line for line in (dst / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= upto
    ]
    (dst / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    return dst


# --------------------------------------------------------------------------------------------------
# Config: finite floats
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "override", "field", "shown"),
    [
        (SFTConfig, "learning_rate=inf", "learning_rate", "inf"),
        (SFTConfig, "learning_rate=.nan", "learning_rate", "nan"),
        (SFTConfig, "max_grad_norm=1e999", "max_grad_norm", "inf"),  # overflows to inf
        (GDSOConfig, "beta=-.inf", "beta", "-inf"),
        (RISDConfig, "teacher_temperature=nan", "teacher_temperature", "nan"),
    ],
)
def test_config_refuses_non_finite_floats(cls, override, field, shown):
    extra = ["teacher=t"] if cls is RISDConfig else []
    with pytest.raises(ConfigError, match=rf"'{field}': must be a finite number, got {shown}$"):
        cls.from_sources(None, ["data=d", override, *extra])


def test_learning_rate_above_one_is_refused():
    # finite, but so large that torch's Adam step overflowed with a raw RuntimeError (1e38)
    with pytest.raises(ConfigError, match="'learning_rate': must be at most 1 for AdamW, got 1e"):
        SFTConfig.from_sources(None, ["data=d", "learning_rate=1e38"])
    assert SFTConfig.from_sources(None, ["data=d", "learning_rate=1"]).learning_rate == 1.0


def test_cli_refuses_infinite_learning_rate_before_training(small_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, small_data, "learning_rate=inf", "max_steps=1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["zreward: error: 'learning_rate': must be a finite number, got inf"]
    assert not out.exists()  # refused before anything was written


# --------------------------------------------------------------------------------------------------
# Non-finite loss or gradient norm
# --------------------------------------------------------------------------------------------------


def test_nan_loss_mid_run_stops_without_saving_and_resume_continues(
    small_data, straight, tmp_path, monkeypatch, capsys, one_thread
):
    import zreward_deploy.training.sft as sft

    real_loss, calls = sft._sft_loss, []

    def loss_nan_at_step_2(out, batch):
        calls.append(1)
        loss, logs = real_loss(out, batch)
        return (loss * math.nan, logs) if len(calls) == 2 else (loss, logs)

    monkeypatch.setattr(sft, "_sft_loss", loss_nan_at_step_2)
    out = tmp_path / "run"
    assert train(out, small_data, "max_steps=3", "save_every=1", "keep_checkpoints=3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zreward: error: 'sft': step 2: the loss is nan")
    assert f"the last good checkpoint is {checkpoint(out, 1)}" in err[0]
    # nothing after step 1 was written: no step-2 checkpoint, no final model, `latest` unchanged
    assert not (out / "model").exists() and not checkpoint(out, 2).exists()
    assert (out / CHECKPOINT_DIR / LATEST_FILE).read_text() == checkpoint(out, 1).name
    assert [r["step"] for r in read_metrics(out)] == [1]

    monkeypatch.setattr(sft, "_sft_loss", real_loss)  # the cause fixed: resume=auto continues
    assert train(out, small_data, "max_steps=3", "save_every=1", "keep_checkpoints=3") == 0
    assert rows(out) == rows(straight)
    assert (out / "model" / "config.json").is_file()


@pytest.fixture
def loop(small_data, tmp_path, one_thread):
    """A started SFT loop (tiny preset, no checkpoint yet) and its inner model."""
    cfg = SFTConfig(data=str(small_data), output_dir=str(tmp_path / "run"), batch_size=4, progress=False)
    run = start_run(cfg)
    model, processor = load_model(cfg.model, seed=cfg.seed)
    return TrainLoop.start(run, model, processor, num_items=12, total_updates=3), model


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward; an infinite gradient backward (a finite loss whose gradient overflowed)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


@pytest.mark.parametrize("poison", ["nan_loss", "inf_loss", "inf_gradient"])
def test_update_with_non_finite_values_is_not_applied(loop, poison):
    loop, model = loop
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = sum(p.float().square().mean() for p in model.parameters())
    if poison == "inf_gradient":
        bad, what = _InfiniteGradient.apply(loss), "the gradient norm is (nan|inf) \\(the loss is finite\\)"
    else:
        value = math.nan if poison == "nan_loss" else math.inf
        bad, what = loss * value, f"the loss is {value}"
    with pytest.raises(
        NonFiniteLossError, match=f"^'sft': step 1: {what}; the update was not applied"
    ) as info:
        loop.update(bad)
    assert "no checkpoint was saved yet" in str(info.value)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical: no step was taken
    assert loop.scheduler.last_epoch == 0 and not loop.optimizer.state
    assert all(p.grad is None for p in model.parameters())
    # control: a finite loss does move the weights, so the comparison above can see a step
    loop.update(sum(p.float().square().mean() for p in model.parameters()))
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------------------------------
# Resume from damaged output folders
# --------------------------------------------------------------------------------------------------


def test_resume_drops_a_cut_last_metrics_line(small_data, straight, tmp_path, caplog, one_thread):
    out = copy_run(straight, tmp_path / "run", upto=2)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 1.4')  # a crash while appending step 3's line
    caplog.set_level(logging.WARNING)
    assert train(out, small_data, "max_steps=3", "save_every=1", "keep_checkpoints=3") == 0
    assert "last line (line 3) was cut short" in warnings_of(caplog)
    assert rows(out) == rows(straight)


def test_metrics_readers_tolerate_only_a_cut_last_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
    caplog.set_level(logging.WARNING)
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    assert "line 3" in warnings_of(caplog)
    path.write_text('{"step": 1, "loss": 1.0}\nnot json\n{"step": 2, "loss": 0.5}\n')
    with pytest.raises(ZRewardInputError, match="line 2 is not a JSON object"):
        MetricsWriter(tmp_path, enabled=True, resume_step=2)
    with pytest.raises(ZRewardInputError, match="line 2 is not a JSON object"):
        read_metrics(tmp_path)
    assert "not json" in path.read_text()  # reported, not silently rewritten


def test_missing_rng_file_is_reported(small_data, straight, tmp_path, caplog, one_thread):
    out = copy_run(straight, tmp_path / "run", upto=2)
    (checkpoint(out, 2) / "rng_state_rank0.pt").unlink()
    caplog.set_level(logging.WARNING)
    assert train(out, small_data, "max_steps=3") == 0
    assert f"checkpoint {checkpoint(out, 2)} has no RNG state (rng_state_rank0.pt)" in warnings_of(caplog)
    assert [r["step"] for r in rows(out)] == [1, 2, 3]


@pytest.mark.parametrize("damage", ["deleted", "incomplete"])
def test_latest_naming_a_lost_checkpoint_falls_back(
    small_data, straight, tmp_path, caplog, damage, one_thread
):
    out = copy_run(straight, tmp_path / "run", upto=2)
    if damage == "deleted":
        shutil.rmtree(checkpoint(out, 2))
    else:
        (checkpoint(out, 2) / "trainer_state.json").unlink()
    caplog.set_level(logging.WARNING)
    assert train(out, small_data, "max_steps=3", "save_every=1", "keep_checkpoints=3") == 0
    problem = "is missing" if damage == "deleted" else "is incomplete (no trainer_state.json)"
    expected = f"names 'step_00000002', which {problem}; resuming from the newest complete checkpoint"
    assert expected in warnings_of(caplog) and str(checkpoint(out, 1)) in warnings_of(caplog)
    assert rows(out) == rows(straight)  # steps 2 and 3 redone from step 1: the same run


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan_weight(path):
    weights = load_file(path)
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], math.nan)
    save_file(weights, path)


DAMAGES = {
    "truncated safetensors": ("model/model.safetensors", _truncate, "is not a readable safetensors file"),
    "empty safetensors": ("model/model.safetensors", lambda p: p.write_bytes(b""), "is empty"),
    "NaN weights": ("model/model.safetensors", _nan_weight, "holds NaN or infinite values"),
    "garbage optimizer": ("optimizer.pt", lambda p: p.write_bytes(b"not a torch file"), "cannot be read"),
    "empty scheduler": ("scheduler.pt", lambda p: p.write_bytes(b""), "is empty"),
    "truncated RNG state": ("rng_state_rank0.pt", _truncate, "cannot be read"),
    "invalid trainer state": ("trainer_state.json", lambda p: p.write_text('{"step": 2,'), "not valid JSON"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_checkpoint_file_is_an_invalid_model_error_naming_it(
    small_data, straight, tmp_path, damage, one_thread
):
    from zreward_deploy.training.sft import train_sft

    out = copy_run(straight, tmp_path / "run", upto=2)
    name, spoil, reason = DAMAGES[damage]
    spoil(checkpoint(out, 2) / name)
    cfg = SFTConfig(data=str(small_data), output_dir=str(out), batch_size=4, max_steps=3, progress=False)
    with pytest.raises(InvalidModelError) as info:
        train_sft(cfg)
    assert info.value.item == str(checkpoint(out, 2) / name)
    assert reason in info.value.reason
    # the older complete checkpoint is named, not loaded in its place
    assert f"resume={checkpoint(out, 1)} continues from it" in info.value.reason
    assert not (out / "model").exists()


# --------------------------------------------------------------------------------------------------
# Training data: an image that does not decode
# --------------------------------------------------------------------------------------------------


def _first_batch_record(method: str, data_dir, teacher_dir) -> str:
    """The id of a record the first global batch of ``method`` draws (so the code before this change,
    which decoded lazily, would reach it at step 1)."""
    from zreward_deploy.data import load_split
    from zreward_deploy.training.data import ItemData, PairData
    from zreward_deploy.training.loop import EpochSampler

    _, processor = load_model("preset:tiny")
    records = load_split(data_dir, "train")
    dims = processor.config.get_rubric().names
    if method == "gdso":
        pairs = PairData(records, processor, dims)
        first = EpochSampler(len(pairs), 2, seed=0).next_batch()[0]
        return pairs.records[pairs.pairs[first].w].id
    if method == "opd":
        items = ItemData(records, processor, dims)
        first = EpochSampler(len(items), 4, seed=0).next_batch()[0]
        return items.records[items.items[first][0]].id
    return records[EpochSampler(len(records), 4, seed=0).next_batch()[0]].id


RUNS = {
    "sft": [],
    "gdso": ["batch_size=2", "group_size=2", "max_new_tokens=4", "inner_updates=1", "beta=0"],
    "risd": ["teacher_max_new_tokens=4"],
    "opd": ["max_new_tokens=4"],
}


@pytest.mark.parametrize("method", sorted(RUNS))
def test_undecodable_image_is_skipped_counted_and_logged(
    method, small_data, teacher_dir, tmp_path, caplog, capsys, one_thread
):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    bad = _first_batch_record(method, data, teacher_dir)
    _truncate(data / "images" / f"{bad}.png")  # the header survives: `zreward data check` accepts it
    caplog.set_level(logging.WARNING)
    extra = [*RUNS[method], *([f"teacher={teacher_dir}"] if method in ("risd", "opd") else [])]
    assert train(tmp_path / "run", data, "max_steps=1", "resume=never", *extra, method=method) == 0
    logged = warnings_of(caplog)
    assert "skipped 1 of 12 items with undecodable images" in logged
    assert f"{bad} ({data / 'images' / bad}.png): cannot be decoded" in logged
    assert "skipped 1 training item(s)" in capsys.readouterr().out
    assert [r["skipped_items"] for r in read_metrics(tmp_path / "run") if r["step"] > 0] == [1]
    if method == "risd":  # the teacher cache covers the 11 decodable records only
        cache = (tmp_path / "run" / "teacher_targets.jsonl").read_text().splitlines()
        assert len(cache) == 11 * 4 and not any(json.loads(line)["id"] == bad for line in cache)


def test_no_decodable_image_is_a_clear_error(small_data, tmp_path):
    import dataclasses

    from zreward_deploy.data import load_split
    from zreward_deploy.training.data import ImageCache

    _, processor = load_model("preset:tiny")
    records = load_split(small_data, "train")[:2]
    broken = []
    for r in records:
        path = tmp_path / r.image_path.name
        path.write_bytes(r.image_path.read_bytes()[:60])
        broken.append(dataclasses.replace(r, image_path=path))
    with pytest.raises(ZRewardInputError, match="none of the 2 records has an image that can be decoded"):
        ImageCache(broken, processor)


# --------------------------------------------------------------------------------------------------
# Two processes stop together
# --------------------------------------------------------------------------------------------------

NAN_ON_RANK_1 = """
import math, os, sys

import zreward_deploy.training.sft as sft

real, calls = sft._sft_loss, []


def loss(out, batch):
    calls.append(1)
    value, logs = real(out, batch)
    if len(calls) == 2 and os.environ["RANK"] == "1":  # only the second process's loss, at step 2
        value = value * math.nan
    return value, logs


sft._sft_loss = loss
from zreward_deploy.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_nan_loss_on_one_process_stops_every_process(small_data, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--master_addr", "127.0.0.1", "--master_port", str(port), str(script)),
        *("train", "sft", f"data={small_data}", f"output_dir={out}", *SFT),
        *("max_steps=3", "save_every=1", "resume=never"),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "TOKENIZERS_PARALLELISM": "false",
    }
    # a process left waiting in an all-reduce would hang: the timeout turns that into a failure
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("zreward: error:")]
    assert proc.returncode != 0 and len(errors) == 2, proc.stderr[-3000:]
    assert all("'sft': step 2: the loss is" in line and checkpoint(out, 1).name in line for line in errors)
    assert any("on another process" in line for line in errors)  # the process whose own loss was finite
    assert not (out / "model").exists() and not checkpoint(out, 2).exists()
