"""``zreward serve``: serve a model over HTTP with the micro-batcher (docs/serving.md).

``zreward serve --model DIR [--backend torch|onnx|tensorrt] [--host 127.0.0.1] [--port N]`` runs one
process (one worker thread per model); ``--ray --replicas N`` runs the same app as a Ray Serve deployment
with N replicas (one per GPU when ``--device cuda``). The token is read from ``$ZREWARD_SERVE_TOKEN`` when
``--token`` is not given (a flag shows in the process list; the variable does not).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from zreward_deploy.cliargs import add_dataclass_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    from zreward_deploy.serving.config import ServeConfig

    p = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP: micro-batching, protocol v1, trainer routes (docs/serving.md)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model directory (or an export folder with --backend onnx)")
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnx", "tensorrt"],
        help="runtime (default: torch); onnx/tensorrt take an export folder (docs/export.md)",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment (needs the `ray` extra)")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray; default: 1)")
    p.add_argument(
        "--gpus-per-replica",
        type=float,
        default=0.0,
        help="GPUs reserved per Ray Serve replica (with --ray; 1 puts one replica per GPU; default: 0)",
    )
    add_dataclass_arguments(p, ServeConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zreward_deploy.cliargs import check_device, dataclass_from_namespace
    from zreward_deploy.errors import ZRewardInputError
    from zreward_deploy.serving.config import TOKEN_ENV, ServeConfig

    config = dataclass_from_namespace(ServeConfig, args)
    if config.token is None and os.environ.get(TOKEN_ENV):
        config = ServeConfig(**{**vars(config), "token": os.environ[TOKEN_ENV]})
    check_device(args.device)
    if args.replicas < 1:
        raise ZRewardInputError("--replicas", f"must be >= 1, got {args.replicas}")
    if args.replicas > 1 and not args.ray:
        raise ZRewardInputError("--replicas", "needs --ray (one process serves one replica)")
    if args.ray:
        from zreward_deploy.serving.ray_serve import serve_with_ray

        serve_with_ray(
            args.model,
            config,
            backend=args.backend,
            device=args.device,
            replicas=args.replicas,
            gpus_per_replica=args.gpus_per_replica,
            on_started=_announce,
        )
        return 0  # serve_with_ray returns on Ctrl-C after shutting Serve down

    from zreward_deploy.scoring import load_scorer
    from zreward_deploy.serving.server import serve_forever

    scorer = load_scorer(
        args.model, backend=args.backend, device=args.device, max_batch_size=config.max_batch_size
    )
    # uvicorn re-raises Ctrl-C after its graceful shutdown: for a server that is the normal stop
    with contextlib.suppress(KeyboardInterrupt):
        serve_forever(scorer, config, model_dir=args.model, on_started=_announce)
    print("zreward serve: stopped", flush=True)
    return 0


def _announce(url: str) -> None:
    # One line on stdout, flushed: scripts (and the tests) read the URL, with the real port for --port 0.
    print(f"zreward serve: listening on {url} (POST {url}/v1/score; Ctrl-C stops)", flush=True)
    sys.stdout.flush()
