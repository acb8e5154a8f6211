"""Logging for the node: text for people, JSON (python-json-logger) for machines.

Log lines carry stable `extra` keys (run_id, node_id, message_id, exit_code,
duration_seconds) so JSON logs can be queried. A redacting filter is the last
line of defence for secrets: the node never logs them on purpose, and the
filter replaces any secret it knows (claude_code_scheduler.redaction) that
slips into a line anyway.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

from pythonjsonlogger.json import JsonFormatter

from claude_code_scheduler.redaction import Redactor, SecretRegistry

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
# The node's own secrets found in its environment, redacted everywhere.
SECRET_ENV_NAMES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
)
CONTEXT_KEYS = ("node_id", "run_id", "message_id", "exit_code", "duration_seconds")


class SecretFilter(logging.Filter):
    """The last line of defence for the node's own log lines: the node never
    logs a secret on purpose, and this replaces any that slips into a line
    anyway, by the rule of claude_code_scheduler.redaction. The node's own
    secrets everywhere; a run's values (task env, resolved secrets) in that
    run's lines (the `run_id` extra) while it lasts. `redact` and `redactor`
    serve the run's output and the events the node builds from it."""

    def __init__(self) -> None:
        super().__init__()
        self.registry = SecretRegistry()
        self._credentials: Callable[[], Iterable[str]] | None = None

    def add_node_secrets(self, values: Iterable[str]) -> None:
        self.registry.add_node_values(values)

    def remove_node_secrets(self, values: Iterable[str]) -> None:
        self.registry.remove_node_values(values)

    def track_credentials(self, current: Callable[[], Iterable[str]]) -> None:
        """`current` gives the node's AWS credentials as they are now (they
        rotate): read at once, and again at each `refresh_credentials`."""
        self._credentials = current
        self.refresh_credentials()

    def refresh_credentials(self) -> None:
        """At each run's start: a rotated set is redacted from then on (the
        set before it too, see redaction.SecretRegistry)."""
        if self._credentials is None:
            return
        try:
            self.registry.set_credentials(self._credentials())
        except Exception as exc:  # the endpoint is down: keep the sets known so far
            logging.getLogger(__name__).warning(
                "could not read the node's AWS credentials to redact them: %s",
                type(exc).__name__,
            )

    @contextmanager
    def for_run(self, run_id: str, values: Iterable[str]) -> Iterator[None]:
        """Redact `values` from the run's lines and output while the block lasts."""
        with self.registry.for_run(run_id, values):
            yield

    def redactor(self, run_id: str | None = None) -> Redactor:
        return self.registry.redactor(run_id)

    def redact(self, text: str, run_id: str | None = None) -> str:
        return self.registry.redactor(run_id).redact(text)

    def filter(self, record: logging.LogRecord) -> bool:
        run_id = getattr(record, "run_id", None)
        redactor = self.registry.redactor(run_id if isinstance(run_id, str) else None)
        record.msg = redactor.redact(record.getMessage())
        record.args = None
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if isinstance(value, str):
                setattr(record, key, redactor.redact(value))
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
    SECRETS.add_node_secrets(environ[name] for name in SECRET_ENV_NAMES if environ.get(name))
    handler.addFilter(SECRETS)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore's debug lines echo request and response bodies, and a RunTask
    # body may hold task env values: keep the AWS libraries quiet at any level.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
