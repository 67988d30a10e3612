"""Safety and limits: pickle is refused and never run, body and count limits (413), decompression bombs
refused from the header, bearer-token authentication (401), loopback by default."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import httpx
import pytest

from .helpers import png_b64, random_image, v1_body

SERVING_SRC = Path(__file__).resolve().parents[2] / "zreward_deploy" / "serving"


class _MakesADirectory:
    """A pickle payload: unpickling it calls ``os.mkdir(path)`` (the shape of the published RCE reports
    against pickle-over-HTTP reward servers, with a harmless action)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize(
    "route, content_type, status",
    [
        ("/", None, 415),  # Flow-GRPO's reward-server protocol: pickle posted to /
        ("/v1/score", "application/octet-stream", 415),
        ("/v1/score", "application/python-pickle", 415),
        ("/flowgrpo", None, 415),
        ("/v1/score", "application/json", 400),  # a pickle labelled JSON: a JSON parse error, nothing run
        ("/compute", "application/json", 400),
    ],
)
def test_pickle_body_is_refused_and_its_code_never_runs(shared_server, tmp_path, route, content_type, status):
    target = tmp_path / "pwned"
    payload = pickle.dumps({"images": [b"\xff\xd8"], "prompts": ["x"], "x": _MakesADirectory(str(target))})
    headers = {"Content-Type": content_type} if content_type else {}
    r = httpx.post(shared_server + route, content=payload, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert not target.exists(), "the payload's code ran on the server"
    # the payload is live: unpickled here (locally, not from the network) it does act
    pickle.loads(payload)
    assert target.is_dir()


def test_serving_code_has_no_pickle_loader():
    for path in [*SERVING_SRC.glob("*.py"), *(SERVING_SRC.parent / "adapters").glob("*.py")]:
        text = path.read_text()
        assert "import pickle" not in text and "pickle.load" not in text and "torch.load" not in text, path


def test_body_over_the_limit_is_413_with_and_without_content_length(controlled, serve):
    url, _ = serve(controlled, max_body_bytes=50_000)
    body = v1_body([random_image(0, (200, 200))], ["x"])  # ~160 KB of PNG as base64
    r = httpx.post(f"{url}/v1/score", json=body, timeout=30)
    assert r.status_code == 413 and "limit of 50000" in r.json()["error"]

    def chunks():  # chunked transfer: no Content-Length, the limit is enforced while streaming
        data = httpx.Request("POST", url, json=body).read()
        for i in range(0, len(data), 8192):
            yield data[i : i + 8192]

    r = httpx.post(
        f"{url}/v1/score", content=chunks(), headers={"Content-Type": "application/json"}, timeout=30
    )
    assert r.status_code == 413
    assert controlled.calls == []  # nothing reached the scorer
    small = httpx.post(f"{url}/v1/score", json=v1_body([random_image(0)], ["x"]), timeout=30)
    assert small.status_code == 200


def test_too_many_images_is_413(controlled, serve):
    url, _ = serve(controlled, max_images_per_request=3)
    r = httpx.post(f"{url}/v1/score", json=v1_body([random_image(0)] * 4, ["x"] * 4), timeout=30)
    assert r.status_code == 413 and "4 images" in r.json()["error"]
    assert controlled.calls == []


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` with almost no pixel data (a decompression bomb's
    header: decoding it would allocate width*height*3 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def test_images_over_the_pixel_limit_are_refused_from_the_header(controlled, serve):
    import base64

    url, _ = serve(controlled, max_image_pixels=64 * 64)
    body = v1_body([random_image(0, (32, 32)), random_image(1, (65, 64))], ["ok", "too big"])
    body["requests"].append(
        {"text": "bomb", "image_b64": base64.b64encode(_png_header_only(60_000, 60_000)).decode()}
    )
    out = httpx.post(f"{url}/v1/score", json=body, timeout=30).json()
    assert out["scores"][0] is not None
    assert "more than the limit of 4096" in out["errors"][1]["zreward"]
    assert out["errors"][2]["zreward"].startswith("InvalidImageError: 2:")
    assert out["scores"][1] is None and out["scores"][2] is None


def test_other_formats_are_refused(shared_server):
    import base64

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(random_image(0)).save(buffer, format="GIF")
    body = {"requests": [{"text": "x", "image_b64": base64.b64encode(buffer.getvalue()).decode()}]}
    out = httpx.post(f"{shared_server}/v1/score", json=body, timeout=30).json()
    assert "not a PNG or JPEG" in out["errors"][0]["zreward"]


def test_jpeg_is_accepted(shared_server, scorer):
    import base64

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(random_image(3)).save(buffer, format="JPEG", quality=95)
    body = {"requests": [{"text": "x", "image_b64": base64.b64encode(buffer.getvalue()).decode()}]}
    out = httpx.post(f"{shared_server}/v1/score", json=body, timeout=30).json()
    decoded = Image.open(io.BytesIO(buffer.getvalue()))
    assert out["scores"][0] == pytest.approx(float(scorer.score([decoded], ["x"]).reward[0]), abs=1e-6)


def test_bearer_token(controlled, serve):
    url, _ = serve(controlled, token="s3cret-token")
    body = v1_body([random_image(0)], ["x"])
    r = httpx.post(f"{url}/v1/score", json=body, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{url}/v1/score", json=body, headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert r.status_code == 401
    assert controlled.calls == []
    for path in ("/metrics", "/v1/rewards"):
        assert httpx.get(url + path).status_code == 401
    r = httpx.post(f"{url}/v1/score", json=body, headers={"Authorization": "Bearer s3cret-token"}, timeout=30)
    assert r.status_code == 200 and r.json()["scores"][0] is not None
    assert httpx.get(f"{url}/v1/health").status_code == 200  # liveness stays open


def test_binds_loopback_by_default():
    from zreward_deploy.serving.config import ServeConfig

    assert ServeConfig().host == "127.0.0.1"


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_batch_size", 0),
        ("max_queue_items", -1),
        ("token", ""),
        ("port", 70000),
        ("max_images_per_request", 10**6),
    ],
)
def test_config_refuses_bad_values(field, value):
    from zreward_deploy.errors import ZRewardInputError
    from zreward_deploy.serving.config import ServeConfig

    with pytest.raises(ZRewardInputError, match=field.replace("_", "-")):
        ServeConfig(**{field: value})


def test_png_b64_helper_round_trips():
    import base64

    from PIL import Image

    image = random_image(2)
    decoded = Image.open(io.BytesIO(base64.b64decode(png_b64(image))))
    assert (pytest.importorskip("numpy").asarray(decoded) == image).all()
