"""Logging for the node: text for people, JSON (python-json-logger) for machines.

Log lines carry stable `extra` keys (run_id, node_id, message_id, exit_code,
duration_seconds) so JSON logs can be queried. A redacting filter is the last
line of defence for secrets: the node never logs them on purpose, and the
filter replaces any secret value it knows that slips into a line anyway.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from pythonjsonlogger.json import JsonFormatter

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
SECRET_ENV_NAMES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
)
# Values shorter than this are too likely to match ordinary text to redact.
MIN_SECRET_LENGTH = 6
CONTEXT_KEYS = ("node_id", "run_id", "message_id", "exit_code", "duration_seconds")


class SecretFilter(logging.Filter):
    """Redacts secrets: the node's own everywhere, a run's task env values in
    that run's log lines (the `run_id` extra) while it lasts. Scoped so that
    one task's env value (it may be ordinary words) never blanks other runs'
    lines. `redact` serves the events the node builds from a run's output."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._node: set[str] = set()
        self._runs: dict[str, frozenset[str]] = {}

    def add_node_secrets(self, values: Iterable[str]) -> None:
        with self._lock:
            self._node.update(v for v in values if len(v) >= MIN_SECRET_LENGTH)

    def remove_node_secrets(self, values: Iterable[str]) -> None:
        with self._lock:
            self._node.difference_update(values)

    @contextmanager
    def for_run(self, run_id: str, values: Iterable[str]) -> Iterator[None]:
        """Redact `values` from the run's lines while the block lasts."""
        with self._lock:
            self._runs[run_id] = frozenset(v for v in values if len(v) >= MIN_SECRET_LENGTH)
        try:
            yield
        finally:
            with self._lock:
                self._runs.pop(run_id, None)

    def redact(self, text: str, run_id: str | None = None) -> str:
        with self._lock:
            secrets = self._secrets(run_id)
        return _scrub(text, secrets)

    def _secrets(self, run_id: str | None) -> list[str]:
        found = self._node | (self._runs.get(run_id, frozenset()) if run_id else frozenset())
        # Longest first: a secret that contains another is replaced whole.
        return sorted(found, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        run_id = getattr(record, "run_id", None)
        with self._lock:
            secrets = self._secrets(run_id if isinstance(run_id, str) else None)
        if not secrets:
            return True
        record.msg = _scrub(record.getMessage(), secrets)
        record.args = None
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if isinstance(value, str):
                setattr(record, key, _scrub(value, secrets))
        return True


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{key}={getattr(record, key)}"
            for key in CONTEXT_KEYS
            if getattr(record, key, None) is not None
        )
        return f"{line} [{context}]" if context else line


SECRETS = SecretFilter()


def configure(verbosity: int, log_format: str, environ: Mapping[str, str]) -> None:
    level = LEVELS.get(verbosity, TRACE)
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    SECRETS.add_node_secrets(environ[name] for name in SECRET_ENV_NAMES if environ.get(name))
    handler.addFilter(SECRETS)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore's debug lines echo request and response bodies, and a RunTask
    # body may hold task env values: keep the AWS libraries quiet at any level.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
