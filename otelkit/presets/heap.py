"""The application's heap at startup, left out of later garbage collections.

Full collections walk every container object the collector tracks, and in a served app
most of them are modules, classes, functions, routes and the SDK's and instrumentations'
objects that live as long as the process. Requests' objects that are still in flight when
a younger collection runs are promoted and make full collections come round, each walking
that whole heap again. Once the app has started (``lifespan.startup.complete``), otelkit
collects the garbage there is and then freezes (:func:`gc.freeze`) the objects that are
left, so a full collection walks only what was made since. Frozen objects are still
freed by reference counting; a frozen object that later becomes part of a reference
cycle no one reaches is not reclaimed, so at most the startup heap can stay behind.
``OTELKIT_GC_FREEZE=false`` turns it off.
"""

from __future__ import annotations

import gc
import os

_frozen_in: list[int] = []


def freeze_startup_heap() -> None:
    """Collect, then freeze what survives; once per process (a forked worker freezes
    what it made itself after the fork)."""
    from otelkit.presets import pipeline

    current = pipeline.current()
    if current is None or not current.settings.gc_freeze or os.getpid() in _frozen_in:
        return
    _frozen_in.append(os.getpid())
    gc.collect()
    gc.freeze()
