"""Composition root of the controller: database, MQTT ingest, HTTP app, server.

`create_app(cfg)` builds the FastAPI app; its lifespan opens the database and
starts and stops the MQTT connection in a visible order. `serve(cfg)` runs it
under uvicorn. Nothing connects at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from fleet import __version__
from fleet.api import FleetState, api, public
from fleet.config import FleetConfig
from fleet.dashboard import dashboard
from fleet.db import Database, open_database
from fleet.ingest import FleetMqtt
from fleet.rollout_api import router as rollout_router

log = logging.getLogger(__name__)


def create_app(cfg: FleetConfig, db: Database | None = None) -> FastAPI:
    """The controller app; pass `db` to share an already open database."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = db or open_database(cfg.database_url)
        cfg.blobs_dir.mkdir(parents=True, exist_ok=True)
        cfg.snapshots_dir.mkdir(parents=True, exist_ok=True)
        mqtt_conn = None
        if cfg.mqtt is not None:
            mqtt_conn = FleetMqtt(cfg.mqtt, database, cfg.snapshots_dir, history=cfg.health_history)
            mqtt_conn.start()
        app.state.fleet = FleetState(
            cfg=cfg,
            db=database,
            sink=mqtt_conn,
            mqtt_connected=mqtt_conn.connected.is_set if mqtt_conn else None,
        )
        app.state.mqtt = mqtt_conn
        log.info("fleet controller started mqtt=%s", cfg.mqtt is not None)
        try:
            yield
        finally:
            if mqtt_conn is not None:
                mqtt_conn.stop()
            if db is None:
                database.dispose()
            log.info("fleet controller stopped")

    app = FastAPI(
        title="edge-fleet",
        version=__version__,
        description="Fleet controller for edge vision agents.",
        lifespan=lifespan,
    )
    app.include_router(public)
    app.include_router(api)
    app.include_router(dashboard)
    app.include_router(rollout_router)
    return app


def serve(cfg: FleetConfig) -> None:
    """Run the controller until interrupted."""
    uvicorn.run(create_app(cfg), host=cfg.http.host, port=cfg.http.port, log_config=None)
