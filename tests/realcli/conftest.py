"""Fixtures for the tests that drive the genuine Claude Code CLI."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

# The node tests run the node against the moto server of the integration suite.
from tests.integration.conftest import moto_endpoint, stack  # noqa: F401
from tests.realcli.claude_cli import CliRun, pinned_binary, probe, run_claude

_skip_reasons: list[str] = []


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    """The pinned CLI. Missing: the test fails under CI=true, else it is skipped."""
    binary = pinned_binary()
    reason = probe(binary)
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true and the genuine CLI is needed: {reason}", pytrace=False)
        if reason not in _skip_reasons:
            _skip_reasons.append(reason)
        pytest.skip(reason)
    return binary


@dataclass(frozen=True)
class RunDirs:
    cwd: Path
    home: Path
    tmp: Path


@pytest.fixture
def run_dirs(tmp_path: Path) -> RunDirs:
    """A working directory, a fresh HOME and a CLAUDE_CODE_TMPDIR for one CLI run."""
    dirs = RunDirs(tmp_path / "work", tmp_path / "home", tmp_path / "tmp")
    for path in (dirs.cwd, dirs.home, dirs.tmp):
        path.mkdir()
    return dirs


RunClaude = Callable[..., CliRun]


@pytest.fixture
def claude(claude_bin: Path, run_dirs: RunDirs) -> RunClaude:
    """`run_claude` with the pinned CLI and this test's run directories:
    claude(api, args, prompt, **options)."""
    return functools.partial(
        run_claude, claude_bin, cwd=run_dirs.cwd, home=run_dirs.home, tmpdir=run_dirs.tmp
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for reason in _skip_reasons:
        terminalreporter.write_line(f"tests/realcli skipped: {reason}", yellow=True)
