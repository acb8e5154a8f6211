"""A bounded soak: several mock-mode node processes on one queue, killed and
restarted at random while runs flow. The moto server and node helpers are the
integration suite's; the soak level (soak.py) sets how long it lasts."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import pytest

from tests.chaos import soak
from tests.integration.conftest import moto_endpoint, stack_factory

__all__ = ["moto_endpoint", "stack_factory"]


@dataclass(frozen=True)
class Plan:
    runs: int
    chaos_seconds: float  # how long signals keep coming
    nodes: int = 3


PLANS = {
    "default": Plan(runs=16, chaos_seconds=30),
    "nightly": Plan(runs=240, chaos_seconds=480),
}


@pytest.fixture
def plan() -> Plan:
    return PLANS[soak.level()]


@pytest.fixture
def chaos_seed() -> int:
    """The seed of the soak's random choices; CHAOS_SEED=<n> replays them
    (the timing of a real run still differs)."""
    return int(os.environ.get("CHAOS_SEED") or random.randrange(2**32))
