"""``zreward bench serve`` runs end to end (tiny preset, short cells): both servers, every cell, the
overload run's accounting, and the files it writes. Speed is not asserted here (benchmarks are for that)."""

from __future__ import annotations

import json


def test_bench_serve_cli_runs_and_accounts_for_every_request(tmp_path):
    from zreward_deploy.cli import main

    out = tmp_path / "bench"
    code = main(["bench", "serve", "--preset", "tiny", "--clients", "1,3", "--request-images", "1,4",
                 "--duration-s", "0.5", "--overload-s", "1", "--overload-factor", "2", "--image-size", "48",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in (out / "bench_serve.jsonl").read_text().splitlines()]
    sweep = {(r["mode"], r["request_images"], r["clients"]) for r in rows if r["kind"] == "sweep"}
    assert sweep == {(m, n, c) for m in ("batched", "per_request") for n in (1, 4) for c in (1, 3)}
    for row in rows:
        if row["kind"] == "sweep":
            assert row["requests_ok"] >= 1 and row["images_per_s"] > 0
            assert row["env"]["torch"] and row["config"]["preset"] == "tiny"
    (over,) = [r for r in rows if r["kind"] == "overload"]
    assert over["answered"] == over["requests_sent"] and over["lost"] == 0
    assert over["answered_twice"] == 0 and over["mismatched_identity"] == 0
    assert set(over["statuses"]) <= {"200", "503"} and over["server_peak_rss_mib"] > 0
    table = (out / "bench_serve.md").read_text()
    assert "| request_images | clients | batched_images_per_s" in table and "## Overload" in table
    assert (out / "bench_serve.csv").is_file()
