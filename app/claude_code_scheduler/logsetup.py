"""Logging for the node: text for people, JSON (python-json-logger) for machines.

Log lines carry stable `extra` keys (run_id, node_id, message_id, exit_code,
duration_seconds) so JSON logs can be queried. A redacting filter is the last
line of defence for secrets: the node never logs them on purpose, and the
filter replaces any registered secret value that slips into a line anyway.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable, Mapping

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
MAX_SECRETS = 4096
CONTEXT_KEYS = ("node_id", "run_id", "message_id", "exit_code", "duration_seconds")


class SecretFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._permanent: set[str] = set()
        self._recent: dict[str, None] = {}  # an insertion-ordered set

    def add(self, values: Iterable[str], *, permanent: bool = False) -> None:
        """Register values to redact. Task env values arrive with every run,
        so only the newest MAX_SECRETS of them are kept; the node's own
        (`permanent`) are kept for good."""
        with self._lock:
            for value in values:
                if len(value) < MIN_SECRET_LENGTH or value in self._permanent:
                    continue
                if permanent:
                    self._permanent.add(value)
                else:
                    self._recent.pop(value, None)
                    self._recent[value] = None
            while len(self._recent) > MAX_SECRETS:
                del self._recent[next(iter(self._recent))]

    def _scrub(self, text: str) -> str:
        for secret in (*self._permanent, *self._recent):
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            if not self._permanent and not self._recent:
                return True
            record.msg = self._scrub(record.getMessage())
            record.args = None
            for key in CONTEXT_KEYS:
                value = getattr(record, key, None)
                if isinstance(value, str):
                    setattr(record, key, self._scrub(value))
        return True


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
    SECRETS.add((environ[name] for name in SECRET_ENV_NAMES if environ.get(name)), permanent=True)
    handler.addFilter(SECRETS)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore's debug lines echo request and response bodies, and a RunTask
    # body may hold task env values: keep the AWS libraries quiet at any level.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
