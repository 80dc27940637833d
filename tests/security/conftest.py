"""The ``secured`` fixture: a real nats-server with natsched's TLS and generated roles
(``hostile.secured_server``), for the attack tests of this directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.security.hostile import Secured, secured_server


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    async with secured_server(tmp_path) as server:
        yield server
