"""Network faults between one mock-mode node and the moto server: the node's
--endpoint-url points at a fault-injecting proxy (proxy.py) that can refuse,
reset or silently drop. The moto server and node helpers are the integration
suite's; the soak level (tests/chaos/soak.py) sets how many times each
scenario repeats."""

from __future__ import annotations

import pytest

from tests.chaos import soak
from tests.integration.conftest import moto_endpoint, stack_factory

__all__ = ["moto_endpoint", "stack_factory"]

# Each scenario once under make test; several times a night, since where in
# the run a fault lands differs each time.
ROUNDS = {"default": 1, "nightly": 5}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "round_" in metafunc.fixturenames:
        metafunc.parametrize("round_", range(ROUNDS[soak.level()]))
