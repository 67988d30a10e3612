"""The server's configuration: limits, batching and safety knobs, one dataclass (docs/serving.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ZRewardInputError
from ..imagefile import DEFAULT_MAX_IMAGE_PIXELS

TOKEN_ENV = "ZREWARD_SERVE_TOKEN"
"""Environment variable read for the bearer token when ``--token`` is not given."""


@dataclass
class ServeConfig:
    """Settings of ``zreward serve`` (every field is a flag of the command, ``--max-batch-size`` ...)."""

    host: str = field(
        default="127.0.0.1",
        metadata={"help": "address to bind; loopback by default (0.0.0.0 exposes the server to the network)"},
    )
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port, printed at start)"})
    max_batch_size: int = field(
        default=32,
        metadata={"help": "most items per forward pass; items of concurrent requests are coalesced"},
    )
    max_wait_ms: float = field(
        default=5.0,
        metadata={"help": "longest time the oldest queued item waits for a batch to fill before it runs"},
    )
    max_queue_items: int = field(
        default=1024,
        metadata={
            "help": "most items (images, not requests) waiting to be scored; past it: 503 + Retry-After"
        },
    )
    coalesce: bool = field(
        default=True,
        metadata={
            "help": "batch items of different requests together (off: each request is scored alone, the "
            "per-request baseline of `zreward bench serve`)"
        },
    )
    max_parallel_decodes: int = field(
        default=4,
        metadata={
            "help": "requests decoded at once (base64/PNG -> model resolution); others wait their turn"
        },
    )
    max_connections: int = field(
        default=2048, metadata={"help": "open connections uvicorn serves at once (503 from uvicorn beyond)"}
    )
    max_body_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"help": "largest request body accepted, in bytes (413 beyond)"}
    )
    max_images_per_request: int = field(
        default=256, metadata={"help": "most images in one request (413 beyond)"}
    )
    max_image_pixels: int = field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metadata={"help": "most pixels per image, checked from the header before decoding (bombs refused)"},
    )
    default_deadline_ms: float = field(
        default=120_000.0,
        metadata={"help": "deadline of a request that sets none (`options.deadline_ms`); 504 when it passes"},
    )
    retry_after_s: int = field(
        default=1, metadata={"help": "the Retry-After header (seconds) sent with 503 when the queue is full"}
    )
    idempotency_ttl_s: float = field(
        default=300.0,
        metadata={"help": "how long a scored item is kept by its idempotency_key (0 turns the cache off)"},
    )
    idempotency_max_entries: int = field(
        default=65536, metadata={"help": "most items the idempotency cache holds (oldest dropped first)"}
    )
    token: str | None = field(
        default=None,
        metadata={
            "help": f"bearer token required on every route but the health checks (default: ${TOKEN_ENV}; "
            "none: no authentication)"
        },
    )
    reward_name: str = field(
        default="zreward", metadata={"help": "the reward's name in responses (`results[i][name]`)"}
    )
    model_name: str | None = field(
        default=None, metadata={"help": "model name in the identity block (default: the model folder's name)"}
    )

    def __post_init__(self) -> None:
        positive = {
            "max_batch_size": self.max_batch_size,
            "max_queue_items": self.max_queue_items,
            "max_parallel_decodes": self.max_parallel_decodes,
            "max_connections": self.max_connections,
            "max_body_bytes": self.max_body_bytes,
            "max_images_per_request": self.max_images_per_request,
            "max_image_pixels": self.max_image_pixels,
            "default_deadline_ms": self.default_deadline_ms,
            "idempotency_max_entries": self.idempotency_max_entries,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not value > 0:
                raise ZRewardInputError(f"--{name.replace('_', '-')}", f"must be > 0, got {value!r}")
        for name in ("max_wait_ms", "idempotency_ttl_s", "retry_after_s"):
            if getattr(self, name) < 0:
                raise ZRewardInputError(
                    f"--{name.replace('_', '-')}", f"must be >= 0, got {getattr(self, name)}"
                )
        if not 0 <= self.port <= 65535:
            raise ZRewardInputError("--port", f"must be in 0..65535, got {self.port}")
        if self.max_images_per_request > self.max_queue_items:
            raise ZRewardInputError(
                "--max-images-per-request",
                f"{self.max_images_per_request} exceeds --max-queue-items {self.max_queue_items}: such a "
                "request could never be queued",
            )
        if self.token is not None and not self.token:
            raise ZRewardInputError("--token", "is empty; omit it to serve without authentication")
        if not self.reward_name or not self.reward_name.isidentifier():
            raise ZRewardInputError("--reward-name", f"must be an identifier, got {self.reward_name!r}")
