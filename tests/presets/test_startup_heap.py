"""The startup heap is frozen once the app has started (fewer objects for full
collections to walk); garbage is collected first, and later garbage still is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Starts an instrumented app through the ASGI lifespan protocol, then serves one request
# that leaves a reference cycle behind; prints what the garbage collector did.
SCRIPT = """
import asyncio, gc, json, weakref
import otelkit
from fastapi import FastAPI

class Node:
    pass

def cycle():
    node = Node()
    node.self = node
    return weakref.ref(node)

otelkit.configure(service_name="heap")
app = FastAPI()
otelkit.instrument_fastapi(app)
later = []

@app.get("/leave-a-cycle")
def leave_a_cycle():
    later.append(cycle())
    return {}

async def lifespan_startup():
    sent = []
    async def receive():
        if not sent:
            return {"type": "lifespan.startup"}
        await asyncio.Event().wait()
    async def send(message):
        sent.append(message["type"])
    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    while not sent:
        await asyncio.sleep(0.01)
    task.cancel()
    return sent[0]

async def request(path):
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        pass
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "headers": [],
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}
    await app(scope, receive, send)

gc.disable()
startup_garbage = cycle()
kept = Node()
sent = asyncio.run(lifespan_startup())
frozen = gc.get_freeze_count()
asyncio.run(request("/leave-a-cycle"))
gc.enable()
gc.collect()
print(json.dumps({
    "startup": sent,
    "frozen": frozen,
    "startup_garbage_freed": startup_garbage() is None,
    "later_garbage_freed": later[0]() is None,
}))
"""


def _run(**env: str) -> dict[str, object]:
    environment = {**os.environ, "OTEL_SDK_DISABLED": "false", "OTELKIT_LOG_FORMAT": "none"}
    for signal in ("TRACES", "METRICS", "LOGS"):
        environment[f"OTEL_{signal}_EXPORTER"] = "none"
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return answer


def test_the_startup_heap_is_frozen_after_its_garbage_is_collected() -> None:
    result = _run()
    assert result["startup"] == "lifespan.startup.complete"
    assert isinstance(result["frozen"], int) and result["frozen"] > 1000
    assert result["startup_garbage_freed"] is True
    assert result["later_garbage_freed"] is True


@pytest.mark.parametrize("value", ["false", "0"])
def test_otelkit_gc_freeze_false_leaves_the_heap_as_it_is(value: str) -> None:
    result = _run(OTELKIT_GC_FREEZE=value)
    assert result["startup"] == "lifespan.startup.complete"
    assert result["frozen"] == 0
