"""The FastAPI service the preset tests run (in a subprocess), configured by variables.

APP_MODE=manual: the app calls otelkit itself; APP_MODE=auto: plain code, started under
``opentelemetry-instrument``. APP_DATABASE_URL and APP_DOWNSTREAM_URL point at the
database and the second service. APP_UVICORN_LOGS_TO_ROOT=1 lets uvicorn's records reach
the root logger's handlers, as an application's own logging configuration may.
APP_EXPORT_BEFORE_FORK=1 exports and queues telemetry at import (see ``prefork``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import httpx
from fastapi import FastAPI, HTTPException, Request
from sqlalchemy import create_engine, text

import otelkit
from otelkit.presets import DatabaseCheck

MODE = os.environ.get("APP_MODE", "manual")
DOWNSTREAM = os.environ.get("APP_DOWNSTREAM_URL", "")

if MODE == "manual":
    otelkit.configure()
if os.environ.get("APP_UVICORN_LOGS_TO_ROOT"):
    logging.getLogger("uvicorn").propagate = True

engine = create_engine(
    os.environ.get("APP_DATABASE_URL", "sqlite://"),
    connect_args={"connect_timeout": 2}
    if "postgresql" in os.environ.get("APP_DATABASE_URL", "")
    else {},
)
app = FastAPI()
log = logging.getLogger("app")
app.include_router(otelkit.health_router([DatabaseCheck(engine)], timeout=3.0))


@app.get("/items/{item_id}")
def get_item(item_id: int) -> dict[str, object]:
    otelkit.set_user(id="u-42", email="someone@example.com", plan="pro")
    with engine.connect() as connection:
        value = connection.execute(
            text("SELECT :v + 1 AS n, 'secret-literal' AS s"), {"v": item_id}
        ).scalar()
    downstream = httpx.get(f"{DOWNSTREAM}/echo", timeout=5).json()
    log.info("fetched item %s", item_id)
    return {"value": value, "downstream": downstream, "request_id": otelkit.current_request_id()}


@app.get("/echo")
def echo(request: Request) -> dict[str, object]:
    log.info("echo called")
    return {
        "request_id": otelkit.current_request_id(),
        "header": request.headers.get("x-request-id"),
        "baggage": request.headers.get("baggage"),
    }


@app.get("/boom")
def boom() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("division failed")
        raise HTTPException(status_code=500, detail="failed") from None


@app.get("/crash")
def crash() -> None:
    raise RuntimeError("unhandled failure")


@app.get("/crash-logged")
def crash_logged() -> None:
    try:
        raise RuntimeError("logged failure")
    except RuntimeError:
        log.exception("handler saw the failure")
        raise


@app.get("/orders/{order_id}")
async def get_order(order_id: int, delay_ms: int = 0) -> dict[str, int]:
    await asyncio.sleep(delay_ms / 1000)
    return {"order_id": order_id}


@app.get("/slow")
async def slow() -> dict[str, int]:
    time.sleep(0.2)  # blocks this worker, so concurrent requests spread over the workers
    return {"pid": os.getpid()}


if MODE == "manual":
    otelkit.instrument_all(app=app, engine=engine)
if os.environ.get("APP_EXPORT_BEFORE_FORK"):
    from tests.presets.prefork import export_before_fork, name_exports_by_pid

    export_before_fork()
    app.router.on_startup.append(name_exports_by_pid)  # in each worker, after the fork
