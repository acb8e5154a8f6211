"""Fixtures the infra suites share: the CloudFormation templates, read once
per module (as each module read them before)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra import support


@pytest.fixture(scope="module")
def messaging() -> dict[str, Any]:
    return support.cfn_template(support.MESSAGING)


@pytest.fixture(scope="module")
def ecs_service() -> dict[str, Any]:
    return support.cfn_template(support.ECS_SERVICE)
