"""Ahead-of-time compilation of the score-head kernels for sm_90 (H100/H200), on a machine without a GPU.

The TensorRT plugin will launch a precompiled forward kernel, so its prototype is an interface: this test
compiles the plugin's variant (``fwd_aot_spec``) with ``triton.compile`` for ``GPUTarget("cuda", 90, 32)``
and checks the PTX entry's parameter list against ``FWD_AOT_PARAMS``, the thread count, that no global or
profile scratch is needed (Triton's AOT launcher refuses kernels that need them), and that the 16-bit
variants use tensor-core MMA. It also compiles the variants the JIT path launches on a GPU (ids, log-probs,
the backward with every flag) because the interpreter that runs the CPU tests does not apply Triton's
compile-time typing and layout rules.

Runs in a subprocess without ``TRITON_INTERPRET``: conftest sets it, and under it ``@triton.jit`` makes
interpreted functions that cannot be compiled.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="AOT compilation needs the [triton] extra")

_SCRIPT = r"""
import json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from zreward_deploy.kernels import _score_head_triton as kt

sys.path.insert(0, sys.argv[1])
import aot_spec  # tests/kernels/aot_spec.py, the plugin's interface

assert not kt.INTERPRETED, "TRITON_INTERPRET leaked into the AOT subprocess"
target = GPUTarget("cuda", 90, 32)


def compile_(fn, signature, constexprs, num_warps, attrs=None):
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=target, options={"num_warps": num_warps})


def describe(k):
    ptx = k.asm["ptx"]
    entry = re.search(r"\.entry (\w+)\(([^)]*)\)", ptx)
    params = re.findall(r"\.param \.(\w+)", entry.group(2))
    return {
        "name": k.metadata.name, "entry": entry.group(1), "params": params,
        "target": re.findall(r"\.target (\w+)", ptx), "reqntid": re.findall(r"\.reqntid (\d+)", ptx),
        "mma": sorted(set(re.findall(r"\b(wgmma|mma)\.", ptx))),
        "cp_async_16": bool(re.search(r"cp\.async\.cg\.shared\.global \[[^]]*\], \[[^]]*\], 0x10", ptx)),
        "global_scratch": k.metadata.global_scratch_size, "profile_scratch": k.metadata.profile_scratch_size,
        "shared": k.metadata.shared, "cubin_magic": k.asm.get("cubin", b"")[:4].hex(),
    }


def jit_signature(fn, ptr_types, constexprs):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = ptr_types.get(name, "*fp32")
        else:
            sig[name] = "fp32" if name == "temperature" else "i32"
    return sig


out = {"plugin": {}, "jit": {}}
try:
    for dtype, aligned in (("fp16", True), ("bf16", True), ("fp32", True), ("bf16", False)):
        signature, constexprs, attrs = aot_spec.fwd_aot_spec(dtype, 5, aligned)
        out["plugin"][dtype + ("" if aligned else "_unaligned")] = describe(compile_(
            kt._score_head_fwd_kernel, signature, constexprs, aot_spec.FWD_AOT_NUM_WARPS, attrs))
    common = {"BLOCK_H": 128, "HAS_IDS": True}
    fwd_c = dict(common, BLOCK_N=16, BLOCK_K=32, STORE_LOGPROBS=True, DOT_IEEE=False)
    ptrs = {"hidden_ptr": "*bf16", "weight_ptr": "*bf16", "ids_ptr": "*i64"}
    out["jit"]["fwd_bf16_ids_logprobs"] = describe(compile_(
        kt._score_head_fwd_kernel, jit_signature(kt._score_head_fwd_kernel, ptrs, fwd_c), fwd_c, 4))
    bwd_c = dict(common, BLOCK_N=32, BLOCK_K=16, HAS_GP=True, HAS_GM=True, HAS_GV=True, HAS_GL=True,
                 COMPUTE_DH=True, COMPUTE_DW=True)
    for dtype in ("bf16", "fp32"):
        ptrs = {"hidden_ptr": f"*{dtype}", "weight_ptr": f"*{dtype}", "ids_ptr": "*i64",
                "grad_hidden_ptr": f"*{dtype}"}
        out["jit"][f"bwd_{dtype}_all_flags"] = describe(compile_(
            kt._score_head_bwd_kernel, jit_signature(kt._score_head_bwd_kernel, ptrs, bwd_c), bwd_c, 4))
except Exception as exc:  # reported to the test, which decides between failing and a stated skip
    out["error"] = f"{type(exc).__name__}: {exc}"
print("AOT-RESULT " + json.dumps(out))
"""

_PTX_TYPE = {"i32": "u32", "fp32": "f32"}
HERE = Path(__file__).resolve().parent


def _spec():
    """tests/kernels/aot_spec.py (test modules are not importable by name under --import-mode=importlib)."""
    module_spec = importlib.util.spec_from_file_location("aot_spec", HERE / "aot_spec.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def aot() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences Triton 3.9's notice; 1 is its default
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(HERE)], capture_output=True, text=True, env=env, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("AOT-RESULT ")]
    assert proc.returncode == 0 and lines, (
        f"AOT subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    result = json.loads(lines[-1].removeprefix("AOT-RESULT "))
    error = result.get("error")
    if error and "ptxas" in error.lower():
        # PTX comes from LLVM inside libtriton; only the cubin needs ptxas, which a wheel may lack
        pytest.skip(f"Triton could not run ptxas to build the sm_90 cubin on this machine: {error}")
    assert not error, f"triton.compile for sm_90 failed: {error}"
    return result


@pytest.mark.parametrize("variant", ["fp16", "bf16", "fp32", "bf16_unaligned"])
def test_plugin_forward_prototype(aot, variant):
    kt = _spec()
    info = aot["plugin"][variant]
    dtype = variant.split("_")[0]
    assert info["name"] == info["entry"] == "_score_head_fwd_kernel"
    assert info["target"] == ["sm_90a"]
    # runtime parameters in FWD_AOT_PARAMS order, then the two scratch pointers Triton ≥ 3.3 appends
    # (global, profile; the plugin passes null since neither is used)
    expected = [_PTX_TYPE.get(ty, "u64" if ty.startswith("*") else ty) for _, ty in kt.FWD_AOT_PARAMS]
    assert info["params"] == [*expected, "u64", "u64"], info["params"]
    assert info["reqntid"] == [str(32 * kt.FWD_AOT_NUM_WARPS)]
    assert info["global_scratch"] == 0 and info["profile_scratch"] == 0
    assert info["shared"] <= 227 * 1024, "over sm_90's shared memory per block"
    # 16-bit inputs run on tensor cores; fp32 uses exact FMA (input_precision="ieee"), never TF32 MMA
    assert info["mma"] == ([] if dtype == "fp32" else ["mma"]), info["mma"]
    # the alignment promise is what turns the hidden/weight loads into pipelined 16-byte async copies
    assert info["cp_async_16"] == (not variant.endswith("unaligned"))
    if info["cubin_magic"]:
        assert info["cubin_magic"] == "7f454c46", "the cubin must be an ELF image"


def test_plugin_grid():
    kt = _spec()
    assert kt.fwd_aot_grid(1) == (1, 1, 1)
    assert kt.fwd_aot_grid(kt.FWD_AOT_BLOCK_N + 1) == (2, 1, 1)
    with pytest.raises(ValueError, match="fp8"):
        kt.fwd_aot_spec("fp8", 5)


@pytest.mark.parametrize("variant", ["fwd_bf16_ids_logprobs", "bwd_bf16_all_flags", "bwd_fp32_all_flags"])
def test_jit_variants_compile_for_sm90(aot, variant):
    info = aot["jit"][variant]
    assert info["target"] == ["sm_90a"]
    assert info["global_scratch"] == 0
    assert info["shared"] <= 227 * 1024
