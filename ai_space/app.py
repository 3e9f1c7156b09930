"""The app factory: one FastAPI app per Settings, with its models loading in the background."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from ai_space.auth import BearerAuth
from ai_space.config import Settings
from ai_space.errors import install_handlers
from ai_space.host import Hooks, ModelHost
from ai_space.limits import BodyLimit
from ai_space.logs import TraceContext
from ai_space.routes import router

log = logging.getLogger("ai_space")


def create_app(settings: Settings, hooks: Hooks | None = None) -> FastAPI:
    """Build the server. Loading starts with the app's lifespan and runs in the background."""
    host = ModelHost(settings, hooks or Hooks())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        host.start()
        yield
        if host.engines is not None:
            await host.engines.aclose()  # the front's connections to its engines, this loop's
        # Joining the batcher thread blocks; keep the event loop free while it ends.
        await run_in_threadpool(host.close)

    # No /docs or /openapi.json: they would need the token anyway, and the API is OpenAI's.
    # No slash redirects: Starlette answers `/v1/models/` with a 307 whose Location is the
    # server's own absolute URL (the internal address behind a proxy), and an empty body.
    app = FastAPI(title="ai_space", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, redirect_slashes=False)
    app.state.settings = settings
    app.state.host = host
    install_handlers(app)
    app.include_router(router)
    # Behind the same token as the API (BearerAuth guards every path but /health).
    app.add_api_route("/metrics", host.metrics.endpoint, methods=["GET"],
                      include_in_schema=False)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # Added last, so it runs first: a caller without the token learns nothing else.
    if settings.api_token is not None and settings.auth_required:
        app.add_middleware(BearerAuth, token=settings.api_token.get_secret_value())
    else:
        log.warning("ALLOW_NO_AUTH=1: every endpoint is open to anyone who can reach it")
    # Outermost: every line of a request (its 401 too) carries its `traceparent`.
    app.add_middleware(TraceContext)
    return app
