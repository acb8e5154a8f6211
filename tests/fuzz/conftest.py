"""Property-based fuzzing: the command parser alone, and a real mock-mode node
process on the moto server fed hostile commands.

The moto server and the node helpers are the integration suite's; the soak
level (tests/chaos/soak.py) sets how many examples hypothesis tries.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, settings

from tests.chaos import soak
from tests.chaos.history import Collector
from tests.integration.conftest import (
    NodeProcess,
    Stack,
    make_stack,
    moto_endpoint,
    node_env,
)

__all__ = ["moto_endpoint"]

# Examples per property of the parser alone, and batches of commands sent to
# the node (each batch runs for a few seconds).
PARSER_EXAMPLES = {"default": 300, "nightly": 20_000}
NODE_BATCHES = {"default": 6, "nightly": 80}


def fuzz_settings(*, node: bool = False) -> settings:
    """The hypothesis settings of a property at the current soak level.

    The node properties do not shrink: each example costs seconds of a real
    node, and the failing batch is printed anyway, each message's kind first."""
    examples = (NODE_BATCHES if node else PARSER_EXAMPLES)[soak.level()]
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
        phases=(
            (Phase.explicit, Phase.reuse, Phase.generate)
            if node
            else (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)
        ),
        print_blob=True,
    )


class FuzzNode:
    """One node for the whole module, and what the module has seen of it. Not
    a dataclass: hypothesis would print every field with a failing example."""

    def __init__(self, stack: Stack, node: NodeProcess, collector: Collector) -> None:
        self.stack = stack
        self.node = node
        self.collector = collector
        # run_ids the node started: the only logs the bucket may hold.
        self.started: set[str] = set()

    def __repr__(self) -> str:
        return f"FuzzNode({self.node.node_id})"


NODE_ARGS = (
    "--mock-mode",
    "--poll-wait-seconds",
    "1",
    "--heartbeat-interval",
    "2",
    "--max-concurrent-tasks",
    "2",
    "--task-timeout",
    "120",
)


@pytest.fixture(scope="module")
def fuzz_node(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    stack = make_stack(moto_endpoint, visibility_timeout=30)
    node = NodeProcess(
        stack, tmp_path_factory.mktemp("fuzz-node"), list(NODE_ARGS), node_env(stack)
    )
    try:
        with Collector(stack) as collector:
            collector.wait(
                lambda h: bool(h.of("NodeRegistered", node.node_id)), 30, "NodeRegistered"
            )
            yield FuzzNode(stack, node, collector)
    finally:
        node.kill()
