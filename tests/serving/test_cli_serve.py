"""``zreward serve`` as a user runs it: a subprocess on 127.0.0.1 with any free port, announced on stdout,
the token from the environment, stopped by Ctrl-C (SIGINT) with exit status 0; bad flags are one line and
exit 2."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading

import httpx
import pytest

from .helpers import random_image, v1_body

CLI = [sys.executable, "-m", "zreward_deploy.cli"]


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


def test_zreward_serve_end_to_end(tiny_dir, scorer):
    env = {**os.environ, "ZREWARD_SERVE_TOKEN": "tok-from-env"}
    proc = subprocess.Popen(
        [*CLI, "serve", "--model", str(tiny_dir), "--port", "0", "--max-batch-size", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
        try:
            line = lines.get(timeout=120)
        except queue.Empty:
            pytest.fail(f"no announcement; stderr: {proc.stderr.read() if proc.poll() is not None else ''}")
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        url = match.group(1)
        image = random_image(0)
        body = v1_body([image], ["a red cube"])
        assert httpx.post(f"{url}/v1/score", json=body, timeout=60).status_code == 401
        r = httpx.post(
            f"{url}/v1/score", json=body, headers={"Authorization": "Bearer tok-from-env"}, timeout=60
        )
        assert r.status_code == 200
        out = r.json()
        assert out["scores"][0] == pytest.approx(
            float(scorer.score([image], ["a red cube"]).reward[0]), abs=1e-6
        )
        assert out["model"]["name"] == tiny_dir.name and out["model"]["backend"] == "torch"
        assert httpx.get(f"{url}/v1/health").json()["max_batch_size"] == 4
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, proc.stderr.read()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--replicas", "2"], "--replicas: needs --ray"),
        (["--max-batch-size", "0"], "--max-batch-size: must be > 0"),
        (["--port", "99999"], "--port: must be in 0..65535"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(tiny_dir, args, message):
    out = subprocess.run(
        [*CLI, "serve", "--model", str(tiny_dir), *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"zreward: error: {message}")
