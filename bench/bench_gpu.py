"""Every GPU measurement of the package in one budgeted command: ``zreward bench gpu --out DIR``.

GPU time for this project comes in short slots (about 15 minutes, start-up included), so the command is
prepared and tested on the CPU (``--dry-run``, run in CI) and needs no debugging on the GPU. Sections, in
order of value (docs/benchmarks.md, "GPU measurements"):

  1. ``kernel_tests``   ``pytest -m gpu``, summary only (counts, failures, skip reasons).
  2. ``score_head``     ``bench_score_head`` on CUDA: providers a-d, N in {1, 16, 256, 4096}, K in {5, 9},
                        fwd and fwd_bwd, bf16, with % of the device's peak bandwidth.
  3. ``native_e2e``     a realistic-size native model (``realistic_config("qwen2.5-vl-3b")``, random bf16
                        weights built on the GPU) in ``NativeRewardModel``: ms and images/s at batch 1, 8,
                        32, 64 for eager, four passes (one per dimension), ``torch.compile`` and CUDA graphs;
                        model FLOPs utilisation (MFU, :func:`forward_flops`).
  4. ``ort_cuda``       ONNX Runtime's CUDA provider with IO binding on bench-small: parity with torch, latency
                        (``bench_latency``).
  5. ``tensorrt``       the same with TensorRT, only where ``import tensorrt`` works; otherwise one line.
  6. ``serve``          ``bench_serve`` with the servers on the GPU.

Each section runs in its own subprocess (``isolate``) with a timeout, after its time estimate was checked
against the budget left; a section that raises, crashes or times out is recorded and the next one runs. A
section appends its rows to ``NN_name.jsonl`` and rewrites ``NN_name.md`` as it goes, so a cut-off run
leaves every finished row; ``summary.{jsonl,md}`` holds one line per section. Every row carries the
environment record (GPU, driver, CUDA, torch, triton, ONNX Runtime, git SHA).

``--dry-run`` runs the same code on the CPU with tiny sizes and a small budget: the kernel tests skip with
their reason, CUDA-only providers (Triton, CUDA graphs, ORT's CUDA provider, TensorRT) record why they were
skipped, everything up to the device call runs.

Run:  zreward bench gpu --out runs/bench_gpu [--budget-s 480] [--dry-run]   (or bash bench/gpu.sh)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# bench/ lives at the repository root (pyproject's package-dir), so its parent holds tests/
REPO_ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = "skipped: no CUDA (dry run or no visible GPU)"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class GpuBenchConfig:
    """Settings of ``zreward bench gpu``; every field is a flag (``--field-name``)."""

    out: str = field(default="runs/bench_gpu", metadata=_help("output folder: one jsonl + md per section"))
    budget_s: float | None = field(
        default=None, metadata=_help("wall-clock budget in seconds; default 480 (60 with --dry-run)")
    )
    dry_run: bool = field(default=False, metadata=_help("the same code on the CPU, tiny sizes, small budget"))
    sections: tuple[str, ...] | None = field(
        default=None, metadata=_help("subset of the sections (default: all, in order)")
    )
    isolate: bool = field(default=True, metadata=_help("run each section in a subprocess with a timeout"))
    reserve_s: float = field(default=5.0, metadata=_help("seconds kept free at the end of the budget"))
    model: str = field(default="qwen2.5-vl-3b", metadata=_help("realistic size of the end-to-end section"))
    image_size: int | None = field(default=None, metadata=_help("image side (default 448; 56 dry)"))
    batch_sizes: tuple[int, ...] | None = field(
        default=None, metadata=_help("end-to-end batch sizes (default 1,8,32,64; 1 dry)")
    )
    prompt_tokens: int = field(default=32, metadata=_help("prompt tokens per item (end-to-end)"))
    suffix_tokens: int = field(default=8, metadata=_help("tokens of each of the 4 dimension suffixes"))
    repeats: int | None = field(default=None, metadata=_help("timed runs per setting (default 20; 2 dry)"))
    warmup: int | None = field(default=None, metadata=_help("untimed runs per setting (default 3; 1 dry)"))
    compile_backend: str | None = field(
        default=None, metadata=_help("torch.compile backend (default inductor; eager, i.e. dynamo only, dry)")
    )
    score_head_models: tuple[str, ...] = field(
        default=("qwen2.5-vl-7b",), metadata=_help("models of the score-head section (bench_score_head)")
    )
    ort_preset: str | None = field(
        default=None, metadata=_help("preset of the ORT/TRT sections (bench-small)")
    )
    peak_tflops: float | None = field(
        default=None, metadata=_help("bf16 dense peak for MFU; default from the GPU name (H100, H200)")
    )

    def __post_init__(self) -> None:
        dry = self.dry_run
        self.budget_s = (60.0 if dry else 480.0) if self.budget_s is None else float(self.budget_s)
        self.image_size = self.image_size or (56 if dry else 448)
        self.batch_sizes = tuple(self.batch_sizes or ((1,) if dry else (1, 8, 32, 64)))
        self.repeats = self.repeats or (2 if dry else 20)
        self.warmup = (1 if dry else 3) if self.warmup is None else self.warmup
        self.compile_backend = self.compile_backend or ("eager" if dry else "inductor")
        self.ort_preset = self.ort_preset or ("tiny" if dry else "bench-small")
        self.sections = tuple(self.sections or SECTION_ORDER)
        unknown = sorted(set(self.sections) - set(SECTION_ORDER))
        if unknown:
            raise ValueError(f"unknown sections {unknown}; choose from {SECTION_ORDER}")
        if self.budget_s <= 0 or self.repeats < 1 or self.warmup < 0 or min(self.batch_sizes) < 1:
            raise ValueError("budget_s > 0, repeats >= 1, warmup >= 0 and batch sizes >= 1 are required")
        from zreward_deploy.native import REALISTIC_SIZES

        if self.model not in REALISTIC_SIZES:
            raise ValueError(f"model must be one of {sorted(REALISTIC_SIZES)}, got {self.model!r}")
        if dry and REALISTIC_SIZES[self.model][0] != "qwen2_5_vl":
            raise ValueError("--dry-run shrinks a Qwen2.5-VL size only; use --model qwen2.5-vl-3b")

    @property
    def device(self) -> str:
        """``cuda`` for a real run on a visible GPU; ``cpu`` for the dry run (or without a GPU)."""
        import torch

        return "cuda" if not self.dry_run and torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------------
# The environment record and the per-section files
# --------------------------------------------------------------------------------------------------


def gpu_environment() -> dict[str, Any]:
    """``bench/common.py``'s :func:`environment` plus the driver, torch's CUDA and ORT's providers."""
    import torch

    from zreward_deploy.bench.common import environment

    env = environment()
    env["cuda"] = torch.version.cuda  # the CUDA torch was built with (None on a CPU build)
    env["cuda_available"] = torch.cuda.is_available()
    env["driver"] = _nvidia_driver()
    try:
        import onnxruntime

        env["ort_providers"] = onnxruntime.get_available_providers()
    except Exception:
        env["ort_providers"] = None
    return env


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


class SectionWriter:
    """Appends a section's rows to ``NN_name.jsonl`` and rewrites ``NN_name.md`` after every addition."""

    def __init__(self, out: Path, index: int, name: str, env: dict[str, Any]):
        self.stem = f"{index:02d}_{name}"
        self.jsonl, self.md = out / f"{self.stem}.jsonl", out / f"{self.stem}.md"
        self.work = out / self.stem  # the reused benchmarks' own files (csv, exports, models)
        self.name, self.env = name, env
        # a section's own table (e.g. the score head's pivot) replaces the default one
        self.table: str | None = None
        self.columns: tuple[str, ...] | None = None  # the default table's columns (default: every scalar)
        out.mkdir(parents=True, exist_ok=True)

    def rows(self) -> list[dict[str, Any]]:
        if not self.jsonl.exists():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]

    def add(self, *rows: dict[str, Any]) -> None:
        with self.jsonl.open("a") as f:
            for row in rows:
                f.write(
                    json.dumps({"section": self.name, "status": "ok", **row, "env": self.env}, default=str)
                    + "\n"
                )
        self.write_markdown()

    def write_markdown(self) -> None:
        from zreward_deploy.bench.common import markdown_table

        rows = self.rows()
        env = self.env
        lines = [
            f"# {self.stem}", "",
            f"GPU {env.get('gpu')} (driver {env.get('driver')}), CUDA {env.get('cuda')}, torch {env.get('torch')}, "
            f"triton {env.get('triton')}, onnxruntime {env.get('onnxruntime')}, transformers "
            f"{env.get('transformers')}, git {env.get('git_sha')}; CPU {env.get('cpu')}", "",
        ]  # fmt: skip
        if self.table is not None:
            lines += [self.table, ""]
        else:
            columns: list[str] = list(self.columns or ())
            for row in [] if self.columns else rows:
                columns += [k for k, v in row.items() if k not in columns and k not in ("env", "section")
                            and not isinstance(v, (dict, list))]  # fmt: skip
            lines += [markdown_table(rows, columns) if rows else "(no rows)", ""]
        notes = [r for r in rows if r.get("status", "ok") != "ok" and self.table is not None]
        lines += [f"- {r.get('setting', r.get('provider', ''))}: {r['status']}" for r in notes]
        self.md.write_text("\n".join(lines).rstrip() + "\n")


@dataclass
class Context:
    """What a section gets: its config, writer (and working folder) and wall-clock ``deadline``."""

    cfg: GpuBenchConfig
    writer: SectionWriter
    deadline: float

    @property
    def device(self) -> str:
        return self.cfg.device

    def left_s(self) -> float:
        return self.deadline - time.time()


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


def section_kernel_tests(ctx: Context) -> None:
    """``pytest -m gpu`` in a subprocess (timeout: the section's time left); the summary line, counts,
    failures and skip reasons. Dry run: ``tests/kernels`` only (the same command; every test skips)."""
    tests = REPO_ROOT / "tests"
    if not tests.is_dir():
        ctx.writer.add({"status": f"skipped: no tests/ folder at {REPO_ROOT} (a non-editable install)"})
        return
    paths = ["tests/kernels"] if ctx.cfg.dry_run else ["tests"]
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", *paths, "-q", "-rfEs", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    timeout = max(1.0, ctx.left_s())
    try:
        done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
        output, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output, rc = (
            (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""),
            None,
        )
    row = pytest_summary(output)
    row.update(command=" ".join(cmd[1:]), returncode=rc, seconds=time.perf_counter() - start)
    row["status"] = "ok" if rc in (0, 5) else ("timed out" if rc is None else f"pytest exit {rc}")
    ctx.writer.add(row)


def pytest_summary(output: str) -> dict[str, Any]:
    """Counts from pytest's last line (``3 passed, 2 skipped in 1.2s``), FAILED/ERROR lines, skip reasons."""
    lines = output.strip().splitlines()
    summary = next((ln for ln in reversed(lines) if re.search(r"\b(passed|failed|skipped|error|deselected|no tests ran)\b", ln)), "")  # fmt: skip
    counts = {
        k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed)", summary)
    }
    return {
        "summary": summary.strip("= "),
        **{k: counts.get(k, 0) for k in ("passed", "failed", "skipped", "deselected")},
        "errors": counts.get("error", 0) + counts.get("errors", 0),
        "failures": [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))][:20],
        "skip_reasons": sorted({ln.split(": ", 1)[-1] for ln in lines if ln.startswith("SKIPPED")})[:10],
    }


def section_score_head(ctx: Context) -> None:
    """``bench_score_head.run`` on CUDA (dry: CPU, a tiny head; ``triton`` records its skip)."""
    from zreward_deploy.bench import bench_score_head as sh

    dry = ctx.cfg.dry_run
    if not dry and ctx.device != "cuda":
        ctx.writer.add({"status": NO_CUDA})
        return
    cfg = sh.ScoreHeadBenchConfig(
        out=str(ctx.writer.work), device=ctx.device, dtype="bf16", modes=("fwd", "fwd_bwd"),
        models=("tiny:64:1000",) if dry else ctx.cfg.score_head_models,
        ns=(1, 16) if dry else (1, 16, 256, 4096), ks=(5,) if dry else (5, 9),
        warmup=1 if dry else None, repeats=2 if dry else None,
        compile_backend="eager" if dry else "inductor",
    )  # fmt: skip
    rows = sh.run(cfg)
    ctx.writer.table = sh.report(rows, cfg)
    ctx.writer.add(*({k: v for k, v in r.items() if k != "env"} for r in rows))


def section_native_e2e(ctx: Context) -> None:
    """End-to-end bf16 scoring of a realistic-size native model (module docstring, item 3)."""
    from zreward_deploy.bench import native_gpu

    ctx.writer.columns = native_gpu.COLUMNS
    native_gpu.run(ctx)


def _latency_config(ctx: Context, backends: tuple[str, ...]) -> Any:
    from zreward_deploy.bench.bench_latency import LatencyBenchConfig

    dry = ctx.cfg.dry_run
    return LatencyBenchConfig(
        preset=ctx.cfg.ort_preset, backends=backends, batch_sizes=(1,) if dry else (1, 8, 32),
        warmup=1 if dry else 3, repeats=2 if dry else 20, block=1 if dry else 5, retries=0,
        device=ctx.device, out=str(ctx.writer.work), plot=False,
    )  # fmt: skip


RUNTIME_COLUMNS = ("setting", "backend", "batch", "device", "max_abs_dprobs", "p50_ms", "p95_ms", "images_per_s",
                   "speedup_vs_torch", "unreliable_reason", "status")  # fmt: skip


def _runtime_rows(ctx: Context, backends: tuple[str, ...]) -> None:
    """Parity of each backend with torch on one batch, then ``bench_latency`` (exports made once)."""
    import torch

    from zreward_deploy.bench.bench_latency import make_inputs, run
    from zreward_deploy.bench.bench_parity import load_variant, prepare_model

    ctx.writer.columns = RUNTIME_COLUMNS
    lat = _latency_config(ctx, ("torch", *backends))
    work = ctx.writer.work
    model_dir = prepare_model(None, lat.preset, lat.text_model, work)
    scorers = {b: load_variant(model_dir, work / "exports", b, ctx.device, 8) for b in ("torch", *backends)}
    dims = scorers["torch"].config.get_rubric().names
    pixel_values, ids, mask = make_inputs(scorers["torch"].processor, 8 if not ctx.cfg.dry_run else 2)
    with torch.inference_mode():
        ref = scorers["torch"].forward_batch(pixel_values, ids, mask, dims)[0].float().cpu()
        for name in backends:
            probs = scorers[name].forward_batch(pixel_values, ids, mask, dims)[0].float().cpu()
            describe = scorers[name].describe() if hasattr(scorers[name], "describe") else {}
            ctx.writer.add({"setting": "parity", "backend": name, "batch": int(ids.shape[0]),
                            "max_abs_dprobs": float((probs - ref).abs().max()), "runtime": describe,
                            "status": "ok"})  # fmt: skip
    del scorers
    rows = run(lat)
    ctx.writer.add(*({"setting": "latency", **{k: v for k, v in r.items() if k != "env"}} for r in rows))


def section_ort_cuda(ctx: Context) -> None:
    """ONNX Runtime: the CUDA provider with IO binding on a GPU; the CPU provider in the dry run."""
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if ctx.device == "cuda" and "CUDAExecutionProvider" not in providers:
        ctx.writer.add({"status": f"skipped: onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider "
                                  f"(providers {providers}; the onnxruntime-gpu wheel is not installed)"})  # fmt: skip
        return
    if not ctx.cfg.dry_run and ctx.device != "cuda":
        ctx.writer.add({"status": NO_CUDA})
        return
    _runtime_rows(ctx, ("onnx-fp32",) if ctx.cfg.dry_run else ("onnx-fp32", "onnx-fp16"))


def section_tensorrt(ctx: Context) -> None:
    """TensorRT where ``import tensorrt`` works (engine build, parity, latency); otherwise one line."""
    from zreward_deploy.export.tensorrt import import_tensorrt

    try:
        trt = import_tensorrt()
    except Exception as exc:
        ctx.writer.add({"status": f"skipped: TensorRT not available ({exc})"})
        return
    if ctx.device != "cuda":
        ctx.writer.add({"status": f"{NO_CUDA}; tensorrt {getattr(trt, '__version__', '?')} imports"})
        return
    _runtime_rows(ctx, ("tensorrt-fp16",))


def section_serve(ctx: Context) -> None:
    """``bench_serve`` with ``zreward serve --device cuda`` (dry: CPU, a tiny preset, one short cell)."""
    from zreward_deploy.bench import bench_serve

    dry = ctx.cfg.dry_run
    if not dry and ctx.device != "cuda":
        ctx.writer.add({"status": NO_CUDA})
        return
    cfg = bench_serve.ServeBenchConfig(
        preset=ctx.cfg.ort_preset, device=ctx.device, clients=(1,) if dry else (1, 8, 32),
        request_images=(1,) if dry else (1, 16), duration_s=0.5 if dry else 5.0,
        overload_s=0.0 if dry else 10.0, out=str(ctx.writer.work),
    )  # fmt: skip
    rows = bench_serve.run(cfg)
    ctx.writer.add(*rows)


@dataclass(frozen=True)
class Section:
    """One section: its function and its time estimate in seconds (GPU run, dry run)."""

    run: Callable[[Context], None]
    estimate_s: float
    dry_estimate_s: float

    def estimate(self, cfg: GpuBenchConfig) -> float:
        return self.dry_estimate_s if cfg.dry_run else self.estimate_s


# Estimates (seconds on an H100, from the sizes: docs/benchmarks.md, "GPU measurements"); dry: a 2-core CPU
SECTIONS: dict[str, Section] = {
    "kernel_tests": Section(section_kernel_tests, 45, 12),
    "score_head": Section(section_score_head, 90, 8),
    "native_e2e": Section(section_native_e2e, 220, 15),
    "ort_cuda": Section(section_ort_cuda, 45, 12),
    "tensorrt": Section(section_tensorrt, 5, 5),
    "serve": Section(section_serve, 60, 15),
}
SECTION_ORDER = tuple(SECTIONS)


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------


def run(cfg: GpuBenchConfig) -> list[dict[str, Any]]:
    """Run the sections of ``cfg`` in order within the budget; returns the summary (one row per section),
    also written to ``summary.{jsonl,md}`` after every section."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    end = start + cfg.budget_s - cfg.reserve_s
    env = gpu_environment()
    env["dry_run"] = cfg.dry_run
    (out / "environment.json").write_text(json.dumps(env, indent=2, default=str) + "\n")
    summary: list[dict[str, Any]] = []
    for index, name in enumerate(SECTION_ORDER, start=1):
        if name not in cfg.sections:
            continue
        section, writer = SECTIONS[name], SectionWriter(out, index, name, env)
        for path in (writer.jsonl, writer.md):
            path.unlink(missing_ok=True)  # a re-run into the same folder starts each section afresh
        estimate, left = section.estimate(cfg), end - time.time()
        row: dict[str, Any] = {"section": name, "file": writer.jsonl.name, "estimate_s": estimate}
        if estimate > left:
            row.update(status=f"skipped: needs ~{estimate:.0f} s, {max(left, 0):.0f} s of the budget left",
                       seconds=0.0)  # fmt: skip
            writer.add({"status": row["status"]})
        else:
            # a section may run past its estimate, up to twice it plus 30 s, never past the budget
            deadline = time.time() + min(left, 2 * estimate + 30)
            _progress(f"bench gpu: {name} (estimate {estimate:.0f} s, {left:.0f} s left) ...")
            t0 = time.time()
            status = (_run_isolated if cfg.isolate else _run_inline)(cfg, name, index, env, deadline)
            row.update(status=status, seconds=round(time.time() - t0, 2))
            if status != "ok":
                writer.add({"status": status})
        _progress(f"bench gpu: {name}: {row['status']} ({row['seconds']} s)")
        summary.append(row)
        _write_summary(out, summary, cfg, env, time.time() - start)
    if not summary:
        _write_summary(out, summary, cfg, env, time.time() - start)
    return summary


def _run_inline(cfg: GpuBenchConfig, name: str, index: int, env: dict[str, Any], deadline: float) -> str:
    writer = SectionWriter(Path(cfg.out), index, name, env)
    try:
        SECTIONS[name].run(Context(cfg, writer, deadline))
    except Exception as exc:  # recorded; the next section still runs
        return f"error: {type(exc).__name__}: {exc}"[:2000]
    return "ok"


def _run_isolated(cfg: GpuBenchConfig, name: str, index: int, env: dict[str, Any], deadline: float) -> str:
    """The section in ``python -m zreward_deploy.bench.bench_gpu --child``, killed at ``deadline``."""
    payload = json.dumps(
        {"config": asdict(cfg), "deadline": deadline, "env": env, "index": index}, default=str
    )
    cmd = [sys.executable, "-m", "zreward_deploy.bench.bench_gpu", "--child", name]
    done = run_child(cmd, payload, timeout=max(1.0, deadline - time.time()))
    if done["timed_out"]:
        return f"timed out: killed after {done['seconds']:.0f} s (finished rows are kept)"
    status_line = next((ln for ln in reversed(done["stdout"].splitlines()) if ln.startswith("STATUS ")), None)
    if status_line is not None:
        return status_line.removeprefix("STATUS ")
    tail = " | ".join(done["stderr"].strip().splitlines()[-3:])
    return f"error: the section's process exited {done['returncode']} without a status: {tail}"[:2000]


def run_child(cmd: list[str], stdin: str, timeout: float) -> dict[str, Any]:
    """Run ``cmd`` with ``stdin``; kill it (and its process group) after ``timeout`` seconds. Returns
    ``returncode`` (None when killed), ``stdout``, ``stderr`` (last 20 kB), ``seconds`` and ``timed_out``."""
    import signal

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(stdin, timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the section's own children too (servers, pytest)
        except OSError:
            proc.kill()
        stdout, stderr = proc.communicate()
        timed_out = True
    return {"returncode": None if timed_out else proc.returncode, "stdout": stdout, "stderr": stderr[-20000:],
            "seconds": time.perf_counter() - start, "timed_out": timed_out}  # fmt: skip


def child_main(name: str) -> int:
    """Entry of a section's subprocess: the config, environment and index come on stdin as JSON."""
    payload = json.loads(sys.stdin.read())
    known = {f.name for f in fields(GpuBenchConfig)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in payload["config"].items() if k in known}
    cfg = GpuBenchConfig(**values)
    status = _run_inline(cfg, name, payload["index"], payload["env"], payload["deadline"])
    print("STATUS " + status.replace("\n", " "), flush=True)
    return 0


def _write_summary(
    out: Path, rows: list[dict[str, Any]], cfg: GpuBenchConfig, env: dict, elapsed: float
) -> None:
    from zreward_deploy.bench.common import markdown_table

    with (out / "summary.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps({**row, "env": env}, default=str) + "\n")
    head = (f"# zreward bench gpu{' --dry-run' if cfg.dry_run else ''}: {len(rows)} sections in {elapsed:.0f} s "
            f"of a {cfg.budget_s:.0f} s budget\n\nGPU {env.get('gpu')} (driver {env.get('driver')}), CUDA "
            f"{env.get('cuda')}, torch {env.get('torch')}, triton {env.get('triton')}, onnxruntime "
            f"{env.get('onnxruntime')}, git {env.get('git_sha')}\n\n")  # fmt: skip
    table = markdown_table(rows, ("section", "status", "seconds", "estimate_s", "file"))
    (out / "summary.md").write_text(head + table + "\n")


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def report(cfg: GpuBenchConfig) -> list[dict[str, Any]]:
    """:func:`run`, then print the summary table and where the files are."""
    rows = run(cfg)
    print((Path(cfg.out) / "summary.md").read_text())
    print(f"results: {Path(cfg.out).resolve()} (summary.md, NN_section.jsonl and .md)")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1])
    from zreward_deploy.cliargs import config_from_argv

    report(config_from_argv(GpuBenchConfig, argv, __doc__, space_separated=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
