"""Cost of one reward fine-tuning step: time and peak memory, with and without gradient checkpointing,
and with the reference score head against the fused Triton kernel where a GPU is present.

Each variant runs in a fresh subprocess (``python -m zreward_deploy.refl.bench --child JSON``), so its
peak memory is its own: on a CPU the process's resident-set high-water mark (``getrusage``
``ru_maxrss``; tracemalloc does not see torch's allocations), reported as the peak and as its growth over
the level reached after loading the models; on a GPU ``torch.cuda.max_memory_allocated``. Times are the
median of ``repeats`` steps after ``warmup`` untimed ones, each a full step (sampling, decode, reward,
backward, optimiser). Beside the peaks, the bytes autograd saves for the backward pass of one step
(:func:`saved_activation_bytes`), which is what checkpointing removes, counted exactly. The fused kernel
needs CUDA: without a GPU its rows say "not run here".
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..devices import cpu_name
from ..errors import ZRewardInputError


@dataclass
class ReflBenchConfig:
    """One cost benchmark (each field is a flag of ``zreward refl bench``)."""

    generator: str = field(metadata={"help": "generator folder (zreward refl pretrain)"})
    reward: str = field(metadata={"help": "reward model folder"})
    out: str = field(metadata={"help": "output folder (bench_refl.json, bench_refl.md)"})
    method: str = field(default="draft", metadata={"help": "draft or refl", "choices": ("draft", "refl")})
    k: int = field(default=1, metadata={"help": "DRaFT-K"})
    batch_size: int = field(default=8, metadata={"help": "images per step"})
    num_inference_steps: int = field(default=10, metadata={"help": "sampling steps"})
    warmup: int = field(default=1, metadata={"help": "untimed steps first"})
    repeats: int = field(default=5, metadata={"help": "timed steps (the median is reported)"})
    checkpointing: tuple[str, ...] = field(
        default=("off", "on"), metadata={"help": "gradient checkpointing variants (off, on)"}
    )
    heads: tuple[str, ...] = field(
        default=("torch", "triton"), metadata={"help": "score heads: torch (reference), triton (fused; GPU)"}
    )
    device: str = field(default="auto", metadata={"help": "auto (a GPU if visible), cpu or cuda"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads in each run (0: default)"})

    def __post_init__(self) -> None:
        if self.k < 1 or self.batch_size < 1 or self.repeats < 1 or self.warmup < 0:
            raise ZRewardInputError("repeats", "k, batch_size and repeats must be >= 1, warmup >= 0")
        for value in self.checkpointing:
            if value not in ("off", "on"):
                raise ZRewardInputError("checkpointing", f"{value!r} is not off or on")
        for value in self.heads:
            if value not in ("torch", "triton"):
                raise ZRewardInputError("heads", f"{value!r} is not torch or triton")


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One variant in this process (the child's work): load, warm up, time ``repeats`` steps."""
    import torch

    from ..devices import resolve_device
    from ..scoring import Scorer
    from .finetune import FinetuneConfig, RewardFinetuner
    from .generator import load_generator

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = resolve_device(spec["device"])
    gen = load_generator(spec["generator"], device=device)
    scorer = Scorer.from_pretrained(spec["reward"], device=device)
    scorer.model.score_head.backend = spec["head"]
    cfg = FinetuneConfig(
        method=spec["method"],
        k=spec["k"],
        num_inference_steps=spec["num_inference_steps"],
        grad_checkpointing=spec["checkpointing"] == "on",
        batch_size=spec["batch_size"],
    )
    finetuner = RewardFinetuner(
        gen.unet.train(), gen.scheduler, scorer, gen.encode_prompt, gen.config.latent_shape, cfg, gen.decode
    )
    prompts = ["two red circles", "a blue square on the left", "a green diamond to the left of a red circle"]
    batch = [prompts[i % len(prompts)] for i in range(cfg.batch_size)]
    cuda = device.type == "cuda"
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(spec["warmup"]):
        finetuner.step(batch)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        finetuner.step(batch)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    saved = saved_activation_bytes(finetuner, batch, [gen.unet, scorer.model, finetuner.reference])
    kb = 1024 if sys.platform != "darwin" else 1  # ru_maxrss: KiB on Linux, bytes on macOS
    return {
        **{k: spec[k] for k in ("method", "k", "batch_size", "num_inference_steps", "checkpointing", "head")},
        "device": str(device),
        "run": True,
        "median_step_s": statistics.median(times),
        "min_step_s": min(times),
        "peak_rss_mib": rss_peak * kb / 2**20,
        "rss_growth_mib": (rss_peak - rss_loaded) * kb / 2**20,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "saved_mib": saved / 2**20,
        "threads": torch.get_num_threads(),
    }


def saved_activation_bytes(finetuner: Any, prompts: list[str], modules: list[Any]) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one step's loss (distinct storages,
    parameters excluded), counted with ``torch.autograd.graph.saved_tensors_hooks``: the activation
    memory that checkpointing removes, exact and independent of the allocator (unlike the RSS)."""
    import torch

    params = {
        p.untyped_storage().data_ptr()
        for m in modules
        if isinstance(m, torch.nn.Module)
        for p in [*m.parameters(), *m.buffers()]
    }
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            sizes[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = finetuner.loss(prompts)
    loss.backward()  # a checkpointed region's recomputation happens here, outside the count
    finetuner.optimizer.zero_grad(set_to_none=True)
    return sum(sizes.values())


def _has_cuda(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def run_benchmark(cfg: ReflBenchConfig) -> list[dict[str, Any]]:
    """Every (head, checkpointing) variant in its own subprocess; writes ``bench_refl.json`` and
    ``bench_refl.md`` into ``cfg.out``; returns the rows."""
    from ..fileio import atomic_write_text

    cuda = _has_cuda(cfg.device)
    rows: list[dict[str, Any]] = []
    for head in cfg.heads:
        for ckpt in cfg.checkpointing:
            base = {
                "method": cfg.method,
                "k": cfg.k,
                "batch_size": cfg.batch_size,
                "checkpointing": ckpt,
                "head": head,
            }
            if head == "triton" and not cuda:
                rows.append({**base, "run": False, "why": "not run here: the fused kernel needs a CUDA GPU"})
                continue
            spec = {**dataclasses.asdict(cfg), "checkpointing": ckpt, "head": head}
            spec["device"] = "cuda" if cuda else "cpu"
            print(f"[refl bench] head {head}, checkpointing {ckpt} ...", file=sys.stderr, flush=True)
            rows.append(_child(spec))
    env = {
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "load_avg": list(os.getloadavg()),
        **_versions(),
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "bench_refl.json",
        json.dumps({"config": dataclasses.asdict(cfg), "env": env, "rows": rows}, indent=2) + "\n",
    )
    atomic_write_text(out / "bench_refl.md", format_table(rows) + "\n\n" + json.dumps(env) + "\n")
    return rows


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "zreward_deploy.refl.bench", "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(
            f"benchmark variant {spec['head']}/{spec['checkpointing']} failed: " + " | ".join(tail)
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _versions() -> dict[str, Any]:
    import diffusers
    import torch

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows (time, peak memory; "not run here" where a variant did not run)."""
    lines = [
        "| method | score head | checkpointing | device | batch | median step (s) | saved for backward (MiB) | peak RSS (MiB) | RSS growth in steps (MiB) | CUDA peak (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r.get("run"):
            lines.append(
                f"| {r['head']} | {r['checkpointing']} | | {r['batch_size']} | {r['k']} | {r['why']} | | | |"
            )
            continue
        cuda = f"{r['cuda_peak_mib']:.0f}" if r.get("cuda_peak_mib") is not None else "-"
        lines.append(
            f"| {_method(r)} | {r['head']} | {r['checkpointing']} | {r['device']} | {r['batch_size']} | "
            f"{r['median_step_s']:.3f} | {r['saved_mib']:.1f} | {r['peak_rss_mib']:.0f} | {r['rss_growth_mib']:.0f} | {cuda} |"
        )
    return "\n".join(lines)


def _method(row: dict[str, Any]) -> str:
    return f"DRaFT-{row['k']}" if row["method"] == "draft" else "ReFL"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(measure(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m zreward_deploy.refl.bench --child SPEC_JSON (run by `zreward refl bench`)")
