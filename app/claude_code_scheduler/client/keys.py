"""`keys generate` and `keys public`, and reading the key `submit --signing-key` names.

A signing key is a private Ed25519 JWK with a kid, kept by the scheduler only
(a file readable by it alone, or a Secrets Manager secret outside the nodes'
--secrets-prefix); the nodes get the public half as a JWKS (docs/signing.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import botocore.exceptions
import click

from claude_code_scheduler.aws.clients import make_clients
from claude_code_scheduler.aws.errors import explain
from claude_code_scheduler.aws.names import parse_secret_ref
from claude_code_scheduler.aws.secrets import SecretMissingValue, SecretReader
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.protocol.signing import (
    InvalidKey,
    KeySet,
    SigningKey,
    generate_key,
    load_signing_key,
)

SIGNING_KEY_OPTION = "--signing-key"
# A JWK is a few hundred bytes; this bounds what a wrong path makes us read.
MAX_KEY_FILE_BYTES = 64 * 1024


def read_signing_key(value: str, options: dict[str, Any]) -> SigningKey:
    """The private key at a file path, or in the Secrets Manager secret an ARN
    names (read with --profile / --endpoint-url, in the ARN's region)."""
    text = _secret_text(value, options) if value.startswith("arn:") else _file_text(value)
    try:
        return load_signing_key(text)
    except InvalidKey as exc:
        raise ConfigError(f"{SIGNING_KEY_OPTION}: {value}: {exc}") from None


def _secret_text(arn: str, options: dict[str, Any]) -> str:
    try:
        ref = parse_secret_ref(arn)
    except ValueError as exc:
        raise ConfigError(f"{SIGNING_KEY_OPTION}: {exc}") from None
    if ref.service != "secretsmanager":
        raise ConfigError(f"{SIGNING_KEY_OPTION}: give a file path or a Secrets Manager ARN")
    clients = make_clients(
        region=arn.split(":")[3],
        profile=options.get("profile"),
        endpoint_url=options.get("endpoint_url"),
    )
    try:
        return SecretReader(clients.secretsmanager, clients.ssm).read(ref)
    except SecretMissingValue as exc:
        raise ConfigError(f"{SIGNING_KEY_OPTION}: {exc}") from None
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise explain(exc, SIGNING_KEY_OPTION, arn) from None


def _file_text(path: str, option: str = SIGNING_KEY_OPTION) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(f"{option}: {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data.decode("utf-8", errors="replace")


# --- keys -----------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Make and inspect the Ed25519 keys that sign commands (docs/signing.md)."""


@keys.command()
@click.option("--kid", required=True, help="The key id nodes will know the key by, e.g. 2025-06.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the private JWK (mode 0600; an existing file is never replaced).",
)
def generate(kid: str, out: Path) -> None:
    """Write a new private signing key to --out; print its public JWKS for the nodes."""
    try:
        key = generate_key(kid)
    except InvalidKey as exc:
        raise ConfigError(f"--kid: {exc}") from None
    text = json.dumps(key.private_jwk(), indent=2) + "\n"
    try:
        # O_EXCL: never overwrite a key that may be in use; 0600 from the start,
        # not after a window in which the umask's mode applied.
        descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create {out}: {exc.strerror or exc}") from None
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    click.echo(json.dumps(KeySet({kid: key.key.public_key()}).to_jwks(), indent=2))


@keys.command()
@click.option(
    "--key",
    "files",
    multiple=True,
    required=True,
    help="A private JWK, a public JWK or a JWKS file; repeat to merge several.",
)
def public(files: tuple[str, ...]) -> None:
    """Print one JWKS with the public keys of every --key. To add a key to the
    nodes' set: `keys public --key nodes.jwks --key new.jwk`."""
    entries: list[Any] = []
    for path in files:
        entries.extend(_public_entries(path))
    try:
        key_set = KeySet.of_public_jwks(entries)
    except InvalidKey as exc:
        raise ConfigError(f"keys public: {exc}") from None
    click.echo(json.dumps(key_set.to_jwks(), indent=2))


def _public_entries(path: str) -> list[Any]:
    text = _file_text(path, "keys public")
    try:
        document = json.loads(text)
    except ValueError:
        raise ConfigError(f"keys public: {path} is not JSON") from None
    if isinstance(document, dict) and isinstance(document.get("keys"), list):
        entries = document["keys"]
    elif isinstance(document, dict):
        entries = [document]
    else:
        raise ConfigError(f"keys public: {path} is neither a JWK nor a JWKS")
    return [_public_half(entry, path) for entry in entries]


def _public_half(entry: Any, path: str) -> Any:
    if not isinstance(entry, dict) or "d" not in entry:
        return entry
    try:
        return load_signing_key(json.dumps(entry)).public_jwk()
    except InvalidKey as exc:
        raise ConfigError(f"keys public: {path}: {exc}") from None
