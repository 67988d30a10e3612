"""Serving the reward over HTTP (docs/serving.md): ``zreward serve``.

Layout, one concept per file:

- :mod:`.config`: :class:`ServeConfig`, every limit and knob of the server (typed, with help text).
- :mod:`.protocol`: protocol v1 (JSON and the safetensors fast path) parsed into items and written back;
  the model identity every response carries. No pickle anywhere.
- :mod:`.batcher`: :class:`MicroBatcher`, the asyncio micro-batcher in front of any ``BaseScorer``.
- :mod:`.cache`: the idempotency-key cache.
- :mod:`.app`: the ASGI app (Starlette) with the v1 routes and the compatibility routes.
- :mod:`.server`: run the app on uvicorn (foreground, or a background thread for tests and benchmarks).
- :mod:`.ray_serve`: the same app as a Ray Serve deployment (scale-out).
- :mod:`.client`: :class:`ZRewardClient`, sync and async, verifying every response.

Heavy optional imports (starlette, uvicorn, httpx, prometheus_client, ray) happen inside the modules that
need them; a missing one raises :class:`~zreward_deploy.errors.MissingDependencyError` naming the extra.
"""

from __future__ import annotations
