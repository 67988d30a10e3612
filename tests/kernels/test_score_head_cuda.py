"""The compiled (not interpreted) score-head kernel on a CUDA GPU, at real sizes; skipped without CUDA.

Runs in a subprocess without ``TRITON_INTERPRET`` (conftest sets it for the CPU tests, and under it Triton
would interpret the kernel on CUDA tensors too). Same rule as tests/kernels/test_score_head.py: kernel
error against fp64 ≤ 2 × PyTorch's same-dtype error + a scaled atol, forward and gradients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_SCRIPT = r"""
import json, sys
import torch
from zreward_deploy.kernels.score_head import score_head, score_head_ref

n, h, k, dtype_name = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dtype = getattr(torch, dtype_name)
g = torch.Generator(device="cuda").manual_seed(0)
hidden = torch.randn(n, h, device="cuda", generator=g).to(dtype)
weight = (torch.randn(k + 11, h, device="cuda", generator=g) * 2 / h**0.5).to(dtype)
values = torch.sort(torch.rand(k, device="cuda", generator=g) * 4 + 1).values
ids = torch.randperm(k + 11, device="cuda", generator=g)[:k]
up = {"probs": torch.randn(n, k, device="cuda", generator=g), "mean": torch.randn(n, device="cuda", generator=g),
      "var": torch.randn(n, device="cuda", generator=g), "logprobs": torch.randn(n, k, device="cuda", generator=g)}


def run(fn, cast):
    hl, wl = hidden.to(cast).requires_grad_(), weight.to(cast).requires_grad_()
    out = fn(hl, wl)
    loss = sum((getattr(out, name).double() * u.double()).sum() for name, u in up.items())
    gh, gw = torch.autograd.grad(loss, [hl, wl])
    return {**{name: getattr(out, name) for name in up}, "grad_hidden": gh, "grad_weight": gw}


def oracle(hl, wl):
    from zreward_deploy.kernels.score_head import ScoreHeadOutput
    z = hl @ wl[ids].t() / 0.8
    logq = torch.log_softmax(z, -1)
    q = logq.exp()
    mean = q @ values.double()
    var = (q * (values.double() - mean[:, None]) ** 2).sum(-1)
    return ScoreHeadOutput(q, mean, var, logq)


kern = run(lambda a, b: score_head(a, b, values, 0.8, ids, True, backend="triton"), dtype)
torch_ = run(lambda a, b: score_head_ref(a, b, values, 0.8, ids, True), dtype)
ref = run(oracle, torch.float64)
res = {}
for name in kern:
    res[name] = {
        "err": (kern[name].double() - ref[name]).abs().max().item(),
        "err_torch": (torch_[name].double() - ref[name]).abs().max().item(),
        "scale": max(1.0, ref[name].abs().max().item()),
        "dtype": str(kern[name].dtype), "finite": bool(torch.isfinite(kern[name]).all()),
    }
print("CUDA-RESULT " + json.dumps(res))
"""

_ATOL = {"float32": 2e-6, "float16": 1e-3, "bfloat16": 8e-3}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(("n", "h", "k"), [(1, 3584, 5), (257, 100, 2), (4096, 3584, 9), (200_003, 1024, 32)])
def test_compiled_kernel_on_cuda_matches_fp64(n, h, k, dtype):
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(n), str(h), str(k), dtype],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("CUDA-RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    for name, r in json.loads(lines[-1].removeprefix("CUDA-RESULT ")).items():
        assert r["finite"], name
        # outputs are fp32 always; gradients carry the input dtype and, for the weight, sum over N rows
        atol = 2e-6 if name in ("probs", "mean", "var", "logprobs") else _ATOL[dtype]
        if name == "grad_weight":
            atol *= 1 + n / 4096
        tol = 2 * r["err_torch"] + atol * r["scale"]
        assert r["err"] <= tol, (
            f"{name}: kernel error {r['err']:.3e} > 2 × torch error {r['err_torch']:.3e} + atol"
        )
