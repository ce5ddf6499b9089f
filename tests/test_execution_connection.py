"""Connecting to Ray: an address that is not HOST:PORT is refused at once, before ray.init could hang on it (an
unreachable HOST:PORT is covered through the CLI in test_sweep.py)."""

from __future__ import annotations

import pytest

from raysel.errors import UserError
from raysel.execution.connection import _check_reachable


@pytest.mark.parametrize("address", ["no-port-here", "host:port", ":6379"])
def test_an_address_that_is_not_host_port_is_refused(address: str) -> None:
    with pytest.raises(UserError, match="HOST:PORT"):
        _check_reachable(address)
