"""Two CPU processes (gloo) train exactly like one process with the same global batch.

The two-process run is launched as a subprocess with ``python -m torch.distributed.run
--nproc_per_node 2`` (what ``accelerate launch --multi_gpu --num_processes 2`` runs underneath; note that
``accelerate launch --cpu --num_processes 2`` starts a single process) with ``OMP_NUM_THREADS=1`` and no
visible GPU; the one-process run happens in this process with one thread. Each process takes half of
every global batch and DDP averages the gradients, so the updates (and the final weights) must agree to
floating-point tolerance:

* SFT on a copy of the data where half of the records keep one label of four, so the two halves of a
  batch have different numbers of labelled entries (a per-process mean would give a different update;
  the trainer divides by the global count). Compared to 1e-5.
* GDSO with one pair per process and ``rollout_chunk=1``, so each pair's traces are sampled with the
  same seed whichever process samples them. Compared to 1e-4: the per-process forward passes pad to
  other widths, which changes the rounding (~1e-7) of the step-1 update, hence of the step-2 μ's; the
  group normalisation divides reward differences of ~1e-4 (untrained traces score almost alike) by their
  std, which scales that rounding up by ~10^4 in the advantages. Weights to 1e-5 absolute (each moved
  up to ~1e-3 over the four updates; Adam scales the rounding of a near-zero gradient up to a visible
  share of its update).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from zreward_deploy.cli import main

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two_processes(args: list[str], cwd) -> str:
    """Run ``zreward <args>`` in two gloo processes; returns their combined stdout."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "zreward_deploy.cli",
        *args,
    ]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _partially_labelled(src, dst):
    """Copy of a dataset whose train split lacks some labels (even records keep realism only)."""
    shutil.copytree(src, dst)
    lines = (dst / "train.jsonl").read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if i % 2 == 0:
            rec["scores"] = {"realism": rec["scores"]["realism"]}
            rec["annotations"] = {}
        out.append(json.dumps(rec))
    (dst / "train.jsonl").write_text("\n".join(out) + "\n")
    return dst


# Adam's ε. With ε below a parameter's gradient, Adam's update is about ±lr whatever the gradient's size,
# and its sensitivity to the gradient peaks where |g| is near ε: there, rounding-level differences between
# the two layouts (the batch is summed in another order when it is split in two, e.g. in the embedding's
# backward) move a weight by a visible fraction of lr. SFT: ε = 1e-6 keeps parameters whose true gradient
# is 0 (e.g. attention key biases) from turning that noise into updates of about lr. GDSO (lr 3e-4, two
# steps): some token embeddings get gradients of ~1e-6 from the few rollouts that use them, and with
# ε = 1e-6 their weights differed by 1.9e-5 between layouts on transformers 5 (0.06 lr, over the
# tolerance; seen on one line and not the other only because the start weights differ); ε = 1e-4 makes
# updates of gradients that small proportional to the gradient, so the noise stays rounding-sized, while
# the gradients that matter (grad_norm ~3) still get Adam's normalised steps.
CASES = {
    "sft": ["adam_epsilon=1e-6", "batch_size=4", "max_steps=2"],
    "gdso": [
        "adam_epsilon=1e-4",
        "batch_size=2",
        "group_size=2",
        "max_new_tokens=4",
        "rollout_chunk=1",
        "beta=0.04",
        "max_steps=2",
    ],
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_two_processes_match_one(method, small_data, tmp_path, one_thread):
    data = _partially_labelled(small_data, tmp_path / "data") if method == "sft" else small_data
    common = [
        "train",
        method,
        f"data={data}",
        "resume=never",
        "progress=false",
        *CASES[method],
    ]
    assert main([*common, f"output_dir={tmp_path / 'one'}"]) == 0
    stdout = _launch_two_processes([*common, f"output_dir={tmp_path / 'two'}"], cwd=tmp_path)
    assert stdout.count("model saved to") == 1, stdout  # one summary per run, from the main process

    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2]
    keys = ["loss", "grad_norm"] + (
        ["entries"] if method == "sft" else ["ce", "gap", "reward_mean", "loss_last"]
    )
    rel, atol = (1e-5, 1e-6) if method == "sft" else (1e-4, 1e-5)
    for a, b in zip(one, two, strict=True):
        assert {k: b[k] for k in keys} == pytest.approx({k: a[k] for k in keys}, rel=rel, abs=1e-6)
    if method == "sft":
        assert any(r["entries"] < 16 for r in one)  # masked entries really are in the batches
    w1 = load_file(tmp_path / "one" / "model" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model" / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=rel, atol=atol, msg=k)
    # the weights moved: the comparison is not between two untouched initialisations
    from zreward_deploy.modeling import weights_for_file
    from zreward_deploy.presets import build_preset

    preset = build_preset("tiny", seed=0)[0]
    init = weights_for_file(preset, preset.state_dict())  # the file's names (modeling.weights_for_file)
    assert any(not torch.equal(init[k], w1[k]) for k in w1)
