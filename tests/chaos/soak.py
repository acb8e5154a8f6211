"""How hard the fuzz, chaos and outage suites push: SOAK_LEVEL.

Unset (or `default`), they stay inside `make test`'s budget on two cores.
`SOAK_LEVEL=nightly` gives them more hypothesis examples, more runs, more
kills and longer soaks, for the scheduled CI job. Read when a suite asks,
never at import.
"""

from __future__ import annotations

import os
from typing import TypeVar

import pytest

LEVELS = ("default", "nightly")

T = TypeVar("T")


def level() -> str:
    value = os.environ.get("SOAK_LEVEL", "").strip().lower() or "default"
    if value not in LEVELS:
        raise pytest.UsageError(f"SOAK_LEVEL must be one of {', '.join(LEVELS)}; got {value!r}")
    return value


def pick(default: T, nightly: T) -> T:
    """The value for the current level."""
    return nightly if level() == "nightly" else default
