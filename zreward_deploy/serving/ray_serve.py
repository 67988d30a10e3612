"""Scale-out on Ray Serve: the same app (:func:`~.app.create_app`, its micro-batcher, limits and routes) as
a Ray Serve deployment, one replica per GPU on a GPU cluster (docs/serving.md, "Scale-out with Ray Serve").

Each replica loads its own scorer and runs its own micro-batcher; Ray's proxy routes requests to replicas
(power of two choices on queue length). ``max_ongoing_requests`` is set explicitly: Ray's default (5)
would cap the requests a replica sees at once, and so the batches its batcher can form, silently.
Overload is still this package's: a replica's full queue answers 503 + Retry-After; past
``max_queued_requests`` Ray's router answers 503 itself.

Three ways to run it:

- ``zreward serve --model DIR --ray --replicas N`` (starts or joins a Ray cluster, then serves);
- ``serve run zreward_deploy.serving.ray_serve:app_builder model_dir=DIR replicas=N`` on a cluster
  started with ``ray start``;
- a ``serve deploy`` config whose ``import_path`` is ``zreward_deploy.serving.ray_serve:app_builder``.

Ray 2.60 turns token authentication on by default; local test clusters set ``RAY_AUTH_MODE=disabled``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from ..errors import MissingDependencyError
from .config import ServeConfig

APP_NAME = "zreward"


def _serve() -> Any:
    try:
        from ray import serve
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("ray", "ray", "zreward serve --ray") from exc
    return serve


class ZRewardReplica:
    """One replica: a scorer, its micro-batcher and the app, built when Ray starts the replica."""

    def __init__(self, model_dir: str, config: dict[str, Any], backend: str = "torch", device: str = "cpu"):
        from ..scoring import load_scorer
        from .app import create_app

        serve_config = ServeConfig(**config)
        scorer = load_scorer(
            model_dir, backend=backend, device=device, max_batch_size=serve_config.max_batch_size
        )
        try:
            replica = _serve().get_replica_context().replica_id.unique_id
        except Exception:  # outside a replica (a direct construction in a test)
            replica = None
        self.asgi_app = create_app(
            scorer, serve_config, model_dir=model_dir, replica_id=f"ray:{replica}:{os.getpid()}"
        )

    def __serve_build_asgi_app__(self) -> Any:  # Ray Serve's hook for an app built after __init__
        return self.asgi_app  # (not `self.app`: the ingress wrapper owns that name)


def build_application(
    model_dir: str,
    config: ServeConfig,
    backend: str = "torch",
    device: str = "cpu",
    replicas: int = 1,
    gpus_per_replica: float = 0.0,
    cpus_per_replica: float = 1.0,
) -> Any:
    """The bound Ray Serve application (``serve.run`` it): ``replicas`` copies of :class:`ZRewardReplica`."""
    serve = _serve()
    deployment = serve.deployment(serve.ingress()(ZRewardReplica), name="ZRewardReplica").options(
        num_replicas=replicas,
        # every request a replica may hold is one the batcher can coalesce; the batcher's own bound
        # (max_queue_items, in items) is what sheds load with 503
        max_ongoing_requests=config.max_queue_items,
        max_queued_requests=2 * config.max_queue_items,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
    )
    return deployment.bind(str(model_dir), asdict(config), backend, device)


def app_builder(args: dict[str, str]) -> Any:
    """``serve run zreward_deploy.serving.ray_serve:app_builder model_dir=DIR replicas=2 ...``: string
    arguments -> the application (``model_dir``, ``backend``, ``device``, ``replicas``,
    ``gpus_per_replica`` and any :class:`ServeConfig` field)."""
    args = dict(args)
    model_dir = args.pop("model_dir")
    backend = args.pop("backend", "torch")
    device = args.pop("device", "cpu")
    replicas = int(args.pop("replicas", 1))
    gpus = float(args.pop("gpus_per_replica", 0))
    fields = ServeConfig.__dataclass_fields__
    unknown = sorted(set(args) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown arguments {unknown}; known: model_dir, backend, device, replicas, "
            f"gpus_per_replica, {', '.join(fields)}"
        )
    defaults = ServeConfig()
    typed = {k: _typed(v, getattr(defaults, k)) for k, v in args.items()}
    return build_application(model_dir, ServeConfig(**typed), backend, device, replicas, gpus)


def _typed(text: Any, default: Any) -> Any:
    """A ``key=value`` string as the type of the field's default (``serve run`` passes strings)."""
    if not isinstance(text, str) or default is None:
        return text
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    return type(default)(text)


def start_ray_serve(
    model_dir: str,
    config: ServeConfig,
    backend: str = "torch",
    device: str = "cpu",
    replicas: int = 1,
    gpus_per_replica: float = 0.0,
    cpus_per_replica: float = 1.0,
) -> str:
    """Start (or join, with ``RAY_ADDRESS``) a Ray cluster, deploy ``replicas`` replicas and return the
    URL. :func:`stop_ray_serve` undoes it. ``config.port`` 0 is not supported by Ray's proxy."""
    import ray

    serve = _serve()
    if config.port == 0:
        from ..errors import ZRewardInputError

        raise ZRewardInputError("--port", "Ray Serve needs a fixed port (its proxy binds it), not 0")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    serve.start(http_options={"host": config.host, "port": config.port})
    app = build_application(model_dir, config, backend, device, replicas, gpus_per_replica, cpus_per_replica)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{config.host}:{config.port}"


def stop_ray_serve() -> None:
    """Shut Serve and the Ray session of this process down."""
    import ray

    _serve().shutdown()
    ray.shutdown()


def serve_with_ray(
    model_dir: str,
    config: ServeConfig,
    backend: str = "torch",
    device: str = "cpu",
    replicas: int = 1,
    gpus_per_replica: float = 0.0,
    on_started: Callable[[str], None] | None = None,
) -> None:
    """``zreward serve --ray``: deploy, announce the URL, serve until Ctrl-C, then shut down."""
    url = start_ray_serve(model_dir, config, backend, device, replicas, gpus_per_replica)
    try:
        if on_started is not None:
            on_started(url)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:  # Ctrl-C: the normal way to stop
        pass
    finally:
        stop_ray_serve()
