"""The memory the pipeline holds, as components account for it.

Components that keep data after ``consume`` returns (sending queues, batchers, whole-trace
buffers) have a ``held_bytes()`` method; the memory limiter sums them over the running
graph (:meth:`Host.held_bytes`). The figure is an estimate that costs nothing on the data
path: components count the *items* they hold as data comes and goes, and the bytes per
item come from one sample, encoded, when the figure is asked for (once per check).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from otelkit.collector.pdata.signals import Payload, count_items

PARSED_BYTES_PER_WIRE_BYTE = 3.5
"""A parsed request takes about 3.4 times its encoded size in memory (protobuf upb
messages and their arenas, measured on realistic spans); bytes held as bytes take 1x."""


TYPICAL_SPAN_BYTES = 2048
"""A realistic span (about 520 bytes encoded) held parsed, with its share of its batch."""


@runtime_checkable
class HoldsData(Protocol):
    """A component that keeps data after accepting it."""

    def held_bytes(self) -> int:
        """About how many bytes of memory the data it holds takes now."""
        ...


def parsed_bytes(items: int, sample: Payload | None) -> int:
    """Memory taken by ``items`` items held as parsed requests shaped like ``sample``."""
    if items <= 0 or sample is None:
        return 0
    sample_items = count_items(sample)
    if sample_items == 0:
        return 0
    per_item = sample.ByteSize() / sample_items * PARSED_BYTES_PER_WIRE_BYTE
    return int(items * per_item)
