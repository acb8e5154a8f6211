"""The keys a node trusts (--verification-keys), and the check of each command.

The key set is a JWKS of Ed25519 public keys (protocol.signing.KeySet) kept in
a file, a Secrets Manager secret (by ARN) or an SSM parameter (by name or
ARN). It is read once at start-up, where anything wrong with it is a one-line
ConfigError, and read again when a command names a key id the node does not
know, at most once every REFRESH_SECONDS: a key added to the secret is picked
up without a restart, and a flood of forged key ids costs one read a minute.
A read that fails then keeps the keys the node has.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions

from claude_code_scheduler.aws.errors import describe_error, explain
from claude_code_scheduler.aws.names import parse_secret_ref
from claude_code_scheduler.aws.secrets import SecretMissingValue, SecretSource
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.protocol.signing import (
    InvalidKey,
    KeySet,
    Rejection,
    SignatureRejected,
    verify_command,
)

log = logging.getLogger(__name__)

OPTION = "--verification-keys"
REFRESH_SECONDS = 60.0
# A JWKS of a few keys is a few hundred bytes; Secrets Manager holds 64 KiB.
MAX_KEY_SET_BYTES = 64 * 1024

ReadText = Callable[[], str]


def key_set_reader(value: str, secrets: SecretSource, region: str) -> ReadText:
    """How to read the key set `value` names: an ARN is a secret or parameter,
    an existing file is read as such, and anything else is an SSM parameter
    name (so a mistyped path fails naming both). The node's clients are of its
    own region, so an ARN must name that region."""
    if value.startswith("arn:") or not Path(value).is_file():
        try:
            ref = parse_secret_ref(value)
        except ValueError as exc:
            raise ConfigError(f"{OPTION}: no such file, and {exc}") from None
        if value.startswith("arn:") and value.split(":")[3] != region:
            raise ConfigError(f"{OPTION}: {value} is not in the node's region {region}")
        return lambda: secrets.read(ref)
    path = Path(value)
    return lambda: _read_file(path)


def _read_file(path: Path) -> str:
    with path.open("rb") as file:
        data = file.read(MAX_KEY_SET_BYTES + 1)
    if len(data) > MAX_KEY_SET_BYTES:
        raise InvalidKey(f"the key set is larger than {MAX_KEY_SET_BYTES} bytes")
    return data.decode("utf-8", errors="replace")


def load_key_set(value: str, read: ReadText) -> KeySet:
    """The key set, or a ConfigError in one line that never quotes key material."""
    try:
        return KeySet.from_jwks(read())
    except InvalidKey as exc:
        raise ConfigError(f"{OPTION}: {value}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{OPTION}: cannot read {value}: {exc.strerror or exc}") from None
    except SecretMissingValue as exc:
        raise ConfigError(f"{OPTION}: {exc}") from None
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise explain(exc, OPTION, value) from None


class TrustedKeys:
    """The node's CommandVerifier (node.messages): a command runs only if a key
    of the set signed it and the signature held when SQS took the message."""

    def __init__(
        self,
        value: str,
        read: ReadText,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._value = value
        self._read = read
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._keys = load_key_set(value, read)
        # The first unknown kid reads again however soon after start-up: a key
        # added while the node started must not wait a minute.
        self._read_at: float | None = None

    @classmethod
    def open(cls, value: str, secrets: SecretSource, region: str) -> TrustedKeys:
        return cls(value, key_set_reader(value, secrets, region))

    @property
    def kids(self) -> tuple[str, ...]:
        return self._keys.kids

    def verify(self, command: dict[str, Any], *, sent_at: float | None) -> str:
        """The kid that signed `command`; SignatureRejected otherwise."""
        at = self._clock() if sent_at is None else sent_at
        try:
            return verify_command(command, self._keys, now=at)
        except SignatureRejected as exc:
            if exc.reason is not Rejection.UNKNOWN_KEY or not self._refresh():
                raise
        return verify_command(command, self._keys, now=at)

    def _refresh(self) -> bool:
        """Read the key set again, unless it was read within REFRESH_SECONDS;
        whether the keys changed."""
        with self._lock:
            if self._read_at is not None and self._monotonic() - self._read_at < REFRESH_SECONDS:
                return False
            self._read_at = self._monotonic()
            try:
                keys = load_key_set(self._value, self._read)
            except ConfigError as exc:
                log.warning("could not read the verification keys again: %s", exc)
                return False
            except Exception as exc:  # an outage the adapters did not name
                log.warning("could not read the verification keys again: %s", describe_error(exc))
                return False
            changed = keys.kids != self._keys.kids or keys.to_jwks() != self._keys.to_jwks()
            if changed:
                log.info("verification keys read again: key ids %s", ", ".join(keys.kids))
            self._keys = keys
            return changed
