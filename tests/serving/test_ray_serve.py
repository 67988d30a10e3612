"""Scale-out on Ray Serve: a local Ray instance on the CPU (token auth off: RAY_AUTH_MODE=disabled, set in
tests/conftest.py), 2 replicas of the same app; both replicas serve, and their results equal the
single-process server's. Ray's HTTP proxy binds 127.0.0.1; the cluster is shut down at the end."""

from __future__ import annotations

import concurrent.futures
import os
import queue
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest

from .helpers import random_image, v1_body

pytest.importorskip("ray.serve", reason="the `ray` extra (ray[serve]) is not installed")


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_max_ongoing_requests_is_set_explicitly(tiny_dir):
    from zreward_deploy.serving.config import ServeConfig
    from zreward_deploy.serving.ray_serve import build_application

    config = ServeConfig(port=8000, max_queue_items=512)
    app = build_application(str(tiny_dir), config, replicas=2)
    deployment_config = app._bound_deployment._deployment_config
    # Ray's default of 5 would cap a replica's batches at 5 one-image requests, silently
    assert deployment_config.max_ongoing_requests == 512 and deployment_config.num_replicas == 2


def test_app_builder_types_serve_run_arguments(tiny_dir):
    from zreward_deploy.serving.ray_serve import app_builder

    app = app_builder(
        {
            "model_dir": str(tiny_dir),
            "replicas": "2",
            "coalesce": "false",
            "max_batch_size": "64",
            "token": "t",
        }
    )
    model_dir, config, backend, device = app._bound_deployment.init_args
    assert model_dir == str(tiny_dir) and backend == "torch" and device == "cpu"
    assert config["coalesce"] is False and config["max_batch_size"] == 64 and config["token"] == "t"
    assert app._bound_deployment._deployment_config.num_replicas == 2
    with pytest.raises(ValueError, match="unknown arguments"):
        app_builder({"model_dir": str(tiny_dir), "max_batch": "3"})


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


@pytest.mark.slow
def test_zreward_serve_ray_two_replicas_serve_and_equal_the_single_process_server(tiny_dir, scorer, serve):
    """``zreward serve --ray --replicas 2`` as a user runs it: its own local Ray instance (2 CPUs, one per
    replica), both replicas answer, results equal the single-process server's, Ctrl-C shuts Ray down."""
    assert os.environ.get("RAY_AUTH_MODE") == "disabled"
    images = [random_image(i) for i in range(6)]
    prompts = ["a red cube", "two blue spheres", "x", "a green cone on a table", "three cubes", "a dog"]
    single_url, _ = serve(scorer, model_dir=tiny_dir)
    single = httpx.post(f"{single_url}/v1/score", json=v1_body(images, prompts), timeout=60).json()

    port = _free_port()
    cmd = [sys.executable, "-m", "zreward_deploy.cli", "serve", "--model", str(tiny_dir), "--ray",
           "--replicas", "2", "--port", str(port), "--max-batch-size", "8"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
        line = lines.get(timeout=180)
        assert f"listening on http://127.0.0.1:{port}" in line, line
        url = f"http://127.0.0.1:{port}"
        replicas, results = set(), []

        def one(i):
            r = httpx.post(f"{url}/v1/score", json=v1_body(images, prompts), timeout=60)
            return r.status_code, r.headers.get("x-zreward-replica"), r.json()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # bounded: 40 requests at most
            for _ in range(5):
                for status, replica, out in pool.map(one, range(8)):
                    assert status == 200
                    replicas.add(replica)
                    results.append(out)
                if len(replicas) >= 2:
                    break
        assert len(replicas) == 2, f"only {replicas} answered"
        for out in results:
            # equal to the single-process server to fp32 rounding (a replica runs torch with the one
            # intra-op thread Ray gives a 1-CPU actor, so reductions may be ordered otherwise)
            for got, want in zip(out["results"], single["results"], strict=True):
                assert got["zreward"].keys() == want["zreward"].keys()
                for key, value in want["zreward"].items():
                    assert got["zreward"][key] == pytest.approx(value, abs=1e-6), key
            assert out["model"]["checkpoint_sha256"] == single["model"]["checkpoint_sha256"]
        health = httpx.get(f"{url}/v1/health", timeout=30).json()
        assert health["state"] == "ok" and health["replica"] in replicas
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code == 0, proc.stderr.read()[-2000:]
