"""`python -m ai_space`: read the environment once, refuse to start open by accident, serve."""

from __future__ import annotations

import logging
import os
import sys

import uvicorn

from ai_space.app import create_app
from ai_space.config import ConfigError, Settings
from ai_space.logs import configure

log = logging.getLogger("ai_space")


def main() -> int:
    """Serve until stopped; exit 2 when the configuration is unusable (fail closed)."""
    configure("INFO")
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        log.error("refusing to start: %s", exc)
        return 2
    token = settings.api_token.get_secret_value() if settings.api_token else ""
    configure(settings.log_level, secrets=[token])
    log.info("starting on %s:%d model=%s embedding_model=%s device=%s max_concurrency=%d "
             "max_queue=%d auth=%s", settings.host, settings.port, settings.model_name,
             settings.embedding_model_name, settings.device, settings.max_concurrency,
             settings.max_queue, "on" if settings.auth_required else "OFF")
    try:
        app = create_app(settings)
    except ConfigError as exc:  # ENGINE=llama.cpp on a host where its self-check failed
        log.error("refusing to start: %s", exc)
        return 2
    # log_config=None: uvicorn's loggers keep our JSON handler instead of its text formats.
    uvicorn.run(app, host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), timeout_keep_alive=30, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
