"""The fixed-vs-dynamic resolution benchmark (bench/bench_resolution.py) runs on tiny sizes through the CLI
and writes its files. Its exactness check: an image that already has the fixed size, inside the HF
processor's pixel range, is resized by neither path, so the package's one pass at the fixed size and the HF
path (the family's image processor + the model's own forward, one pass per dimension) must agree to fp32
rounding, for every Qwen-VL family; an image of another size must not (the check can fail)."""

from __future__ import annotations

import json

import pytest

from zreward_deploy.bench.bench_resolution import ResolutionBenchConfig, parse_size, run
from zreward_deploy.cli import main as cli_main

TINY = ["--fixed-size", "32", "--min-pixels", "256", "--max-pixels", "2304", "--threads", "2"]


def test_resolution_bench_writes_its_files_and_the_exact_case_matches(tmp_path, capsys):
    code = cli_main(["bench", "resolution", "--sizes", "32x32,24x40,64x64", *TINY, "--out", str(tmp_path)])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "bench_resolution.jsonl").read_text().splitlines()]
    assert (tmp_path / "bench_resolution.csv").read_text().count("\n") == len(rows) + 1
    assert "| resized images | max |" in (tmp_path / "bench_resolution.md").read_text()
    assert [r["image"] for r in rows] == ["32x32"] * 4 + ["24x40"] * 4 + ["64x64"] * 4
    assert {r["dimension"] for r in rows} == {"alignment", "realism", "aesthetics", "plausibility"}
    for row in rows:
        assert 0 <= row["tv"] <= 1 and 0 <= row["resize_tv"] <= 1 and row["env"]["transformers"]
        assert row["fixed_hw"] == "32x32" and row["fixed_tokens"] == 16  # 32 px / (patch 4 x merge 2)
    exact, other, capped = rows[:4], rows[4:8], rows[8:]
    for row in exact:  # resized by neither path: the two paths agree to fp32 rounding
        assert row["native_hw"] == "32x32" and row["native_tokens"] == 16
        assert row["abs_dmu"] < 1e-5 and row["tv"] < 1e-5
        assert row["resize_max_grey"] < 1e-3 and row["resize_abs_dmu"] < 1e-5
    # 24x40 stays at its own (patch x merge multiple) size natively; the fixed path stretches it to 32x32
    assert all(r["native_hw"] == "24x40" and r["native_tokens"] == 15 for r in other)
    assert max(r["tv"] for r in other) > 1e-3  # a different image gives different scores: the check can fail
    # 64x64 (4096 px) is over max_pixels (2304): the processor shrinks it to 48x48
    assert all(r["native_hw"] == "48x48" and r["native_tokens"] == 36 for r in capped)
    # the resize itself: torch's antialiased bicubic against PIL's, both shrinking 64 -> 32; PIL rounds to
    # 8 bits, so not 0, and within a few grey levels (bilinear was 14-28 off at edges: docs/benchmarks.md)
    assert all(0.1 < r["resize_max_grey"] <= 4 for r in capped), [r["resize_max_grey"] for r in capped]
    assert "| 24x40 |" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_the_exact_case_holds_for_the_other_qwen_families(family):
    config = ResolutionBenchConfig(
        family=family, fixed_size=32, sizes=("32x32",), min_pixels=256, max_pixels=2304
    )
    rows = run(config)
    assert len(rows) == 4 and all(r["family"] == family for r in rows)
    assert max(r["abs_dmu"] for r in rows) < 1e-5 and max(r["tv"] for r in rows) < 1e-5


def test_a_smolvlm_folder_is_refused_with_the_reason(tmp_path):
    from zreward_deploy.native import build_native_preset, save_native

    save_native(*build_native_preset("smolvlm"), tmp_path)
    with pytest.raises(ValueError, match="Qwen-VL"):
        run(ResolutionBenchConfig(model=str(tmp_path), sizes=("32x32",)))


def test_bad_settings_are_refused():
    assert parse_size("96x160") == (96, 160)
    for bad in ("96", "96x", "0x10", "axb", "1x2x3"):
        with pytest.raises(ValueError, match="HxW"):
            ResolutionBenchConfig(sizes=(bad,))
    with pytest.raises(ValueError, match="min_pixels"):
        ResolutionBenchConfig(min_pixels=100, max_pixels=10)
