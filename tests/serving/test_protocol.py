"""Protocol v1 on a real server (127.0.0.1): every route, the UniRL superset, the safetensors fast path,
per-item errors, the identity block. Expected scores come from the in-process ``Scorer`` on the same
pixels, never from the server's own code."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest

from .helpers import png_b64, random_image, v1_body


def _alone(scorer, image, prompt, dims=None):
    result = scorer.score([image], [prompt], dimensions=dims)
    return result


def test_v1_json_scores_equal_in_process_and_bad_items_keep_their_own_error(shared_server, scorer):
    images = [random_image(i) for i in range(3)]
    body = v1_body(images, ["a red cube", "two blue spheres on a table", "a cat"], **{"return": ["probs"]})
    body["requests"].insert(1, {"text": "", "image_b64": png_b64(images[0])})  # empty prompt
    body["requests"].insert(3, {"text": "ok", "image_b64": "%%%not base64%%%"})
    body["requests"].append({"text": "no image"})
    r = httpx.post(f"{shared_server}/v1/score", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["protocol_version"] == "1"
    n = len(body["requests"])
    assert len(out["results"]) == len(out["errors"]) == len(out["scores"]) == len(out["probs"]) == n
    assert [bool(e) for e in out["errors"]] == [False, True, False, True, False, True]
    assert out["errors"][1]["zreward"].startswith("InvalidPromptError: 1:")
    assert out["errors"][3]["zreward"] == "InvalidImageError: 3: image_b64 is not valid base64"
    assert "5" in out["errors"][5]["zreward"] and "image_b64 is missing" in out["errors"][5]["zreward"]
    for k in (1, 3, 5):  # a failed item: no result, no score, never a substituted 0
        assert out["results"][k] == {} and out["scores"][k] is None and out["probs"][k] is None
    dims = out["dimensions"]
    for k, (image, prompt) in zip(
        (0, 2, 4),
        zip(images, ["a red cube", "two blue spheres on a table", "a cat"], strict=True),
        strict=True,
    ):
        ref = _alone(scorer, image, prompt)
        entry = out["results"][k]["zreward"]
        assert entry["score"] == pytest.approx(float(ref.reward[0]), abs=1e-6)
        assert out["scores"][k] == entry["score"]
        for d, name in enumerate(ref.dimensions):
            assert entry[name] == pytest.approx(float(ref.mean[0, d]), abs=1e-6)
            assert entry[f"{name}_var"] == pytest.approx(float(ref.std[0, d]) ** 2, abs=1e-6)
            assert out["probs"][k][name] == pytest.approx(ref.probs[0, d].tolist(), abs=1e-6)
        assert dims == ref.dimensions


def test_model_identity_in_every_response_and_health_rewards_metrics_routes(shared_server, scorer):
    r = httpx.post(f"{shared_server}/v1/score", json=v1_body([random_image(0)], ["x"]), timeout=30)
    model = r.json()["model"]
    assert set(model) >= {"name", "checkpoint_sha256", "backend", "dtype", "score_values"}
    assert model["backend"] == "torch" and model["dtype"] == "float32"
    assert model["score_values"] == [float(v) for v in scorer.config.get_score_scale().values]
    assert (
        len(model["checkpoint_sha256"]) == 64
        and r.headers["x-zreward-model-sha256"] == model["checkpoint_sha256"]
    )
    for path in ("/v1/health", "/health"):
        health = httpx.get(shared_server + path).json()
        assert health["state"] == "ok" and health["model"] == model and health["queue_items"] == 0
    rewards = httpx.get(f"{shared_server}/v1/rewards").json()["rewards"]["zreward"]
    assert "score" in rewards["sub_metrics"] and "alignment_var" in rewards["sub_metrics"]
    metrics = httpx.get(f"{shared_server}/metrics").text
    for name in (
        "zreward_batch_size_bucket",
        "zreward_queue_wait_seconds_bucket",
        "zreward_batch_execution_seconds_bucket",
        "zreward_queue_items",
    ):
        assert name in metrics
    assert 'zreward_requests_total{route="/v1/score",status="200"}' in metrics


def test_checkpoint_sha256_is_the_hash_of_the_weight_files(tiny_dir, scorer, serve):
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in tiny_dir.rglob("*.safetensors")):
        digest.update(str(path.relative_to(tiny_dir)).encode())
        digest.update(path.read_bytes())
    url, _ = serve(scorer, model_dir=tiny_dir)
    assert httpx.get(f"{url}/v1/health").json()["model"]["checkpoint_sha256"] == digest.hexdigest()


def test_unirl_request_shape_is_accepted_and_identities_echoed(shared_server, scorer):
    image = random_image(5)
    body = {
        "protocol_version": "1",
        "requests": [
            {
                "history": [{"text": "a red cube", "image_b64": png_b64(image)}],
                "required_rewards": ["zreward"],
                "request_id": "r1",
                "group_id": "g",
                "sample_id": "s1",
                "policy_version": 3,
            },
            {"history": [{"text": "x", "image_b64": png_b64(image)}], "required_rewards": ["hpsv3"]},
        ],
    }
    out = httpx.post(f"{shared_server}/score", json=body, timeout=30).json()  # UniRL's own path
    assert out["results"][0]["zreward"]["score"] == pytest.approx(
        float(scorer.score([image], ["a red cube"]).reward[0]), abs=1e-6
    )
    assert out["identities"][0]["request_id"] == "r1" and out["identities"][0]["policy_version"] == 3
    assert "hpsv3" in out["errors"][1]["zreward"] and out["results"][1] == {}
    # UniRL's ScoreResponse reads results[i][reward][sub_metric] -> float: every value is a float
    assert all(isinstance(v, float) for v in out["results"][0]["zreward"].values())


def test_options_dims_and_return_levels(shared_server, scorer):
    image = random_image(1)
    body = v1_body([image], ["a red cube"], dims=["realism"], **{"return": "score"})
    out = httpx.post(f"{shared_server}/v1/score", json=body, timeout=30).json()
    assert (
        out["dimensions"] == ["realism"]
        and set(out["results"][0]["zreward"]) == {"score"}
        and "probs" not in out
    )
    ref = scorer.score([image], ["a red cube"], dimensions=["realism"])
    assert out["scores"][0] == pytest.approx(float(ref.reward[0]), abs=1e-6)
    bad = httpx.post(f"{shared_server}/v1/score", json=v1_body([image], ["x"], dims=["nope"]), timeout=30)
    assert bad.status_code == 400 and "nope" in bad.json()["error"]
    bad = httpx.post(
        f"{shared_server}/v1/score", json=v1_body([image], ["x"], **{"return": "everything"}), timeout=30
    )
    assert bad.status_code == 400


@pytest.mark.parametrize(
    "body, status",
    [
        ({"requests": []}, 400),
        ({"requests": "x"}, 400),
        ([1, 2], 400),
        ({"protocol_version": "2", "requests": [{"text": "x"}]}, 400),
        ({"requests": [{"text": "x"}], "grad_mode": True}, 400),
    ],
)
def test_malformed_requests_are_400(shared_server, body, status):
    r = httpx.post(f"{shared_server}/v1/score", json=body, timeout=30)
    assert r.status_code == status and r.json()["error"]


def _safetensors_body(images, prompts, **options):
    from safetensors.numpy import save

    request = {"protocol_version": "1", "requests": [{"text": p} for p in prompts], "options": options}
    return save({"images": np.stack(images)}, metadata={"request": json.dumps(request)})


def test_safetensors_fast_path_equals_json_path(shared_server):
    images = [random_image(i, (36, 52)) for i in range(4)]
    prompts = ["a red cube", "x", "two green cones", "a dog on a sofa"]
    binary = httpx.post(
        f"{shared_server}/v1/score",
        content=_safetensors_body(images, prompts),
        headers={"Content-Type": "application/x-safetensors"},
        timeout=30,
    )
    assert binary.status_code == 200, binary.text
    as_json = httpx.post(f"{shared_server}/v1/score", json=v1_body(images, prompts), timeout=30)
    # PNG is lossless: the same pixels, the same scores, bit for bit
    assert binary.json()["results"] == as_json.json()["results"]


@pytest.mark.parametrize("case", ["float32", "bad_header_length", "count_mismatch", "not_safetensors"])
def test_bad_safetensors_bodies_are_400(shared_server, case):
    from safetensors.numpy import save

    images = np.stack([random_image(0)] * 2)
    meta = {"request": json.dumps({"requests": [{"text": "a"}, {"text": "b"}]})}
    if case == "float32":
        body = save({"images": images.astype(np.float32)}, metadata=meta)
    elif case == "bad_header_length":
        body = (10**12).to_bytes(8, "little") + b"{}"
    elif case == "count_mismatch":
        body = save({"images": images}, metadata={"request": json.dumps({"requests": [{"text": "a"}]})})
    else:
        body = b"\x80\x04not a safetensors file at all"
    r = httpx.post(
        f"{shared_server}/v1/score",
        content=body,
        headers={"Content-Type": "application/x-safetensors"},
        timeout=30,
    )
    assert r.status_code == 400, r.text


def test_flowgrpo_route_returns_outputs_and_scores(shared_server, scorer):
    images = [random_image(i) for i in range(2)]
    body = {
        "images": [png_b64(im) for im in images] + ["bad"],
        "prompts": ["a", "b", "c"],
        "metadata": [{}, {}, {}],
    }
    out = httpx.post(f"{shared_server}/flowgrpo", json=body, timeout=30).json()
    assert (
        out["outputs"] == out["scores"]
        and out["scores"][2] is None
        and "InvalidImageError: 2" in out["errors"][2]
    )
    ref = scorer.score(images, ["a", "b"])
    assert out["scores"][:2] == pytest.approx(ref.reward.tolist(), abs=1e-6)


@pytest.mark.parametrize("spelling", [("prompt", "image"), ("prompts", "images")])
def test_flow_factory_compute_route_takes_both_spellings(shared_server, scorer, spelling):
    images = [random_image(i) for i in range(2)]
    body = {spelling[0]: ["a", "b"], spelling[1]: [png_b64(im) for im in images]}
    out = httpx.post(f"{shared_server}/compute", json=body, timeout=30).json()
    assert out["rewards"] == pytest.approx(scorer.score(images, ["a", "b"]).reward.tolist(), abs=1e-6)
    assert all(math.isfinite(x) for x in out["rewards"])


def test_a_native_vlm_checkpoint_serves_like_in_process(serve, tmp_path):
    """A native folder (here a tiny Qwen2.5-VL saved as a checkpoint) goes through the same server: its
    served scores equal Scorer.from_pretrained(folder) on the same items, and its identity is its own."""
    from zreward_deploy.native import build_native_preset, save_native
    from zreward_deploy.scoring import Scorer

    model, processor = build_native_preset("qwen2_5_vl", seed=4)
    save_native(model, processor, tmp_path / "native")
    scorer = Scorer.from_pretrained(tmp_path / "native")
    url, _ = serve(scorer, model_dir=tmp_path / "native")
    images = [random_image(i) for i in range(2)]
    prompts = ["a red cube", "two blue spheres on a table"]
    r = httpx.post(f"{url}/v1/score", json=v1_body(images, prompts), timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert not any(out["errors"]), out["errors"]
    for k, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        assert out["scores"][k] == pytest.approx(float(_alone(scorer, image, prompt).reward[0]), abs=1e-6)
    assert httpx.get(f"{url}/v1/health").json()["model"]["checkpoint_sha256"]
