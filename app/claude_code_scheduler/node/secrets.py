"""A run's task.secrets, read at run time with the node's own role.

The node reads only references under its --secrets-prefix, one after
another, before the CLI starts; an outage is retried until the run's deadline
or the node stops. The values go to the CLI's environment and to the run's
redactor, nowhere else: no log line, event or error names a value, only the
variable and the reference (which are not secret).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from claude_code_scheduler.aws.errors import describe_error, is_transient
from claude_code_scheduler.aws.names import SecretRef
from claude_code_scheduler.aws.retry import through_outage
from claude_code_scheduler.aws.secrets import SecretSource
from claude_code_scheduler.protocol.commands import MAX_ARGUMENT_BYTES
from claude_code_scheduler.redaction import MIN_SECRET_LENGTH

log = logging.getLogger(__name__)


class SecretError(Exception):
    """A secret the run needs cannot be had; the message names the variable
    and the reference, never a value. `interrupted`: the node is stopping, so
    the run goes back to the queue rather than failing."""

    def __init__(self, message: str, *, interrupted: bool = False) -> None:
        super().__init__(message)
        self.interrupted = interrupted


@dataclass(frozen=True)
class SecretResolver:
    """Reads task.secrets through `source` (aws.secrets.SecretReader), within
    `prefix` only (NodeConfig.secrets_prefix)."""

    source: SecretSource
    prefix: str

    def resolve(
        self,
        secrets: Mapping[str, SecretRef],
        *,
        interrupt: threading.Event,
        time_left: Callable[[], float],
    ) -> dict[str, str]:
        """NAME -> value for each task secret. Raises SecretError for the
        first that cannot be read: outside the prefix (before any call), not
        there, denied, not a string, unfit for an environment, or still
        failing when the run's time is up (`time_left`, in seconds) or
        `interrupt` is set. A retry never sleeps past the run's deadline."""
        for name, ref in secrets.items():
            if not ref.under(self.prefix):
                raise SecretError(
                    f"task.secrets[{name}]: {ref.ref} is outside this node's --secrets-prefix "
                    f"{self.prefix!r}; the node reads no secret outside it"
                )
        return {name: self._read(name, ref, interrupt, time_left) for name, ref in secrets.items()}

    def _read(
        self,
        name: str,
        ref: SecretRef,
        interrupt: threading.Event,
        time_left: Callable[[], float],
    ) -> str:
        retrying = through_outage(
            f"reading task.secrets[{name}] ({ref.ref})",
            interrupt=interrupt,
            stop=lambda state: time_left() <= state.upcoming_sleep,
        )
        try:
            value = retrying(self.source.read, ref)
        except Exception as exc:
            raise _failure(name, ref, exc, interrupt) from None
        _check_value(name, ref, value)
        if len(value) < MIN_SECRET_LENGTH:
            log.warning(
                "task.secrets[%s] (%s) is shorter than %d characters: it is not redacted "
                "from the run's output",
                name,
                ref.ref,
                MIN_SECRET_LENGTH,
            )
        return value


def _failure(name: str, ref: SecretRef, exc: Exception, interrupt: threading.Event) -> SecretError:
    # botocore's and Secrets Manager's messages name the secret and the
    # principal, never the value.
    reason = describe_error(exc)
    if interrupt.is_set():
        return SecretError(
            f"the node stopped while reading task.secrets[{name}] ({ref.ref}): {reason}",
            interrupted=True,
        )
    # Still transient: the retries ran out of the run's time.
    when = " before the run's timeout" if is_transient(exc) else ""
    return SecretError(f"task.secrets[{name}]: could not read {ref.ref}{when}: {reason}")


def _check_value(name: str, ref: SecretRef, value: str) -> None:
    """What the kernel would refuse as an environment string, said before the
    CLI is started (an exec failure would say less)."""
    problem = None
    if "\x00" in value:
        problem = "holds a NUL character, which no environment variable can"
    else:
        try:
            size = len(value.encode("utf-8")) + len(name) + 1
        except UnicodeEncodeError:
            problem = "holds a lone surrogate, which is not UTF-8"
        else:
            if size > MAX_ARGUMENT_BYTES:
                problem = (
                    f"is {size} bytes as {name}=value, more than the kernel's limit of "
                    f"{MAX_ARGUMENT_BYTES} on one environment string"
                )
    if problem:
        raise SecretError(f"task.secrets[{name}]: the value of {ref.ref} {problem}")
