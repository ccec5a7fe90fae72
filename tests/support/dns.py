"""Changing DNS answers for the ``loadbalancing`` exporter's dns resolver.

Every address in 127.0.0.0/8 is loopback on Linux, so servers on 127.0.0.2, 127.0.0.3 ...
sharing one port stand for the machines behind a DNS name."""

from __future__ import annotations

import pytest

from otelkit.collector.exporters.loadbalancing import resolver

Answers = list[list[str] | Exception]


def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Answers:
    """Make every lookup return the last element of the returned list (raise it if it is
    an exception); append to change the answer."""
    answers: Answers = [[]]

    async def lookup(hostname: str) -> list[str]:
        answer = answers[-1]
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    monkeypatch.setattr(resolver, "lookup_addresses", lookup)
    return answers
