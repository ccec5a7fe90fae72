"""The consistent hash ring of the upstream ``loadbalancing`` exporter.

36,000 positions ("360 degrees with two decimals"); each backend takes 100 of them, at
``crc32(endpoint + byte(i)) % 36000``; a position two backends both want stays with the
first in sorted order. A key goes to the backend owning the first position at or after
``crc32(key) % 36000``, wrapping around. The same endpoints give the same ring as
upstream's, so a mixed tier routes alike, and adding or removing one of N backends moves
only about 1/N of the keys.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from zlib import crc32

POSITIONS = 36_000
POINTS_PER_BACKEND = 100


class HashRing:
    """Maps keys to endpoints. Lookup is one crc32 and one table read."""

    def __init__(self, endpoints: Iterable[str]) -> None:
        self.endpoints: tuple[str, ...] = tuple(sorted(set(endpoints)))
        if not self.endpoints:
            raise ValueError("a ring needs at least one endpoint")
        self._owner = self._table()

    def _table(self) -> array[int]:
        """For every position, the index of the endpoint that owns the next ring point."""
        points: dict[int, int] = {}
        for index, endpoint in enumerate(self.endpoints):
            name = endpoint.encode()
            for i in range(POINTS_PER_BACKEND):
                points.setdefault(crc32(name + bytes((i,))) % POSITIONS, index)
        positions = sorted(points)
        owner = array("I", bytes(4 * POSITIONS))
        following = points[positions[0]]  # past the last point: wrap to the first
        nxt = len(positions) - 1
        for position in range(POSITIONS - 1, -1, -1):
            if nxt >= 0 and positions[nxt] == position:
                following = points[position]
                nxt -= 1
            owner[position] = following
        return owner

    def index_for(self, key: bytes) -> int:
        """Index into :attr:`endpoints` of the backend for ``key``."""
        return self._owner[crc32(key) % POSITIONS]

    def endpoint_for(self, key: bytes) -> str:
        return self.endpoints[self.index_for(key)]
