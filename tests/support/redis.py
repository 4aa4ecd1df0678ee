"""The private redis-server (edgerank/testing/redis_server.py) as pytest fixtures: one per
test, killed at its end."""

from __future__ import annotations

import pytest

from edgerank.testing.redis_server import RedisServer

__all__ = ["RedisServer", "redis_server", "redis_tcp"]


@pytest.fixture
def redis_server():
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture
def redis_tcp():
    server = RedisServer(tcp=True)
    yield server
    server.close()
