"""Signed commands: a detached JWS (Ed25519) over the canonical JSON of a command.

The wire form (docs/signing.md): the command object carries a top-level
"signature" holding a compact JWS with a detached payload, RFC 7515 appendix F
("<protected header>..<signature>"). The payload is the RFC 8785 (JCS)
canonical JSON of the command object without "signature", so a signer in any
language that has JCS and Ed25519 produces the same bytes, and the command is
not carried twice in a message that SNS caps at 256 KiB. The protected header
is signed with it and holds exactly:

  alg  "EdDSA" (with an Ed25519 key; nothing else is accepted)
  kid  which key of the verifier's key set signed
  iat  seconds since the epoch when it was signed
  exp  seconds since the epoch after which it is no longer valid
  typ  optional, ignored

Any other header field (crit, b64, jwk, jku, x5u, x5c, ...) is refused: each
either changes what is signed or names a key the verifier would have to
trust, and this verifier trusts only its own key set.

The cryptography is PyJWT's (on `cryptography`); this module only arranges the
bytes. No I/O here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm
from jwt.utils import base64url_encode

from claude_code_scheduler.protocol.commands import InvalidCommand
from claude_code_scheduler.protocol.schedules import signed_form

SIGNATURE_FIELD = "signature"
ALGORITHM = "EdDSA"
# How far the signer's clock may be from the time a command is judged at (the
# time SQS took the message, see node.messages): 5 minutes, the skew AWS itself
# allows a SigV4 request, so a signer and a node that can call AWS at all are
# well inside it. It widens the replay window by as much, small beside a TTL.
MAX_CLOCK_SKEW_SECONDS = 300
# The signer's default lifetime of a signature (submit --signature-ttl): long
# enough for a queue backlog and a few hand-backs at deployments, short enough
# to bound how long a captured command can be replayed (docs/signing.md).
DEFAULT_TTL_SECONDS = 3600
# SQS keeps a message 14 days at most: a longer signature outlives any message.
MAX_TTL_SECONDS = 14 * 24 * 3600
# A schedule signs its template once for all its firings (protocol.schedules),
# so its signature lives as long as the schedule fires: 90 days unless told,
# a year at most, and `schedule renew` signs it again (docs/schedules.md).
DEFAULT_SCHEDULE_TTL_SECONDS = 90 * 24 * 3600
MAX_SCHEDULE_TTL_SECONDS = 366 * 24 * 3600
# A compact Ed25519 JWS is ~200 characters; a generous bound keeps a forged
# multi-megabyte header from costing anything before it is refused.
MAX_SIGNATURE_CHARS = 4096
MAX_KID_CHARS = 128
# How much of a bad value a message quotes.
_DETAIL_CHARS = 60
_HEADER_FIELDS = frozenset({"alg", "kid", "iat", "exp", "typ"})
_ED25519 = {"kty": "OKP", "crv": "Ed25519"}


class Rejection(StrEnum):
    """Why a command's signature was refused: the start of the TaskFailed message."""

    MISSING = "signature missing"
    UNKNOWN_KEY = "unknown key id"
    EXPIRED = "signature expired"
    INVALID = "signature invalid"


class SignatureRejected(InvalidCommand):
    """An InvalidCommand whose message starts with its `reason`."""

    def __init__(self, reason: Rejection, detail: str | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


class InvalidKey(ValueError):
    """A key or key set that cannot be used; the message never quotes key material."""


# --- keys ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key and its key id: held by the scheduler, never a node."""

    kid: str
    key: Ed25519PrivateKey

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"

    def public_jwk(self) -> dict[str, Any]:
        return _public_jwk(self.kid, self.key.public_key())

    def private_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = OKPAlgorithm.to_jwk(self.key, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}


def generate_key(kid: str) -> SigningKey:
    _check_kid(kid)
    return SigningKey(kid, Ed25519PrivateKey.generate())


def load_signing_key(text: str) -> SigningKey:
    """A private Ed25519 JWK with a kid, from its JSON text."""
    jwk = _json_object(text, "the signing key")
    if "d" not in jwk:
        raise InvalidKey("the signing key is a public key; signing needs the private JWK")
    kid, key = _parse_jwk(jwk)
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidKey(f"key {kid!r} is not an Ed25519 private key")
    return SigningKey(kid, key)


class KeySet:
    """The public keys a node trusts, by key id: several at once, so that a new
    key can be added before signers switch to it and the old one removed after."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_jwks(cls, text: str) -> KeySet:
        """A JWKS document ({"keys": [...]}) of Ed25519 public keys. A private
        key anywhere in it refuses the whole set: a node must never hold a key
        that can sign."""
        document = _json_object(text, "the key set")
        entries = document.get("keys")
        if not isinstance(entries, list) or not entries:
            raise InvalidKey('the key set must be a JWKS: {"keys": [...]} with at least one key')
        return cls.of_public_jwks(entries)

    @classmethod
    def of_public_jwks(cls, entries: Iterable[Any]) -> KeySet:
        keys: dict[str, Ed25519PublicKey] = {}
        for index, jwk in enumerate(entries):
            if not isinstance(jwk, dict):
                raise InvalidKey(f"key {index} is not a JSON object")
            if "d" in jwk:
                raise InvalidKey(
                    f"key {index} is a private key: a node must hold public keys only "
                    "(print them with `claude-code-scheduler keys public`)"
                )
            kid, key = _parse_jwk(jwk, f"key {index}")
            if not isinstance(key, Ed25519PublicKey):
                raise InvalidKey(f"key {kid!r} is not an Ed25519 public key")
            if kid in keys:
                raise InvalidKey(f"key id {kid!r} appears twice")
            keys[kid] = key
        return cls(keys)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    def to_jwks(self) -> dict[str, Any]:
        return {"keys": [_public_jwk(kid, self._keys[kid]) for kid in self.kids]}

    def __repr__(self) -> str:
        return f"KeySet(kids={list(self.kids)})"


def _parse_jwk(jwk: dict[str, Any], what: str = "the key") -> tuple[str, Any]:
    kid = jwk.get("kid")
    if not isinstance(kid, str):
        raise InvalidKey(f"{what} has no kid (key id)")
    _check_kid(kid)
    if {name: jwk.get(name) for name in _ED25519} != _ED25519:
        raise InvalidKey(f"key {kid!r} is not an Ed25519 key (kty OKP, crv Ed25519)")
    if jwk.get("alg", ALGORITHM) != ALGORITHM or jwk.get("use", "sig") != "sig":
        raise InvalidKey(f"key {kid!r} is not for EdDSA signatures (alg EdDSA, use sig)")
    try:
        return kid, jwt.PyJWK(jwk, algorithm=ALGORITHM).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
        # The library's message may quote the JWK, private part and all.
        raise InvalidKey(f"key {kid!r} is not a valid Ed25519 JWK") from None


def _check_kid(kid: str) -> None:
    if not kid or len(kid) > MAX_KID_CHARS or not kid.isprintable():
        raise InvalidKey(f"a kid must be 1 to {MAX_KID_CHARS} printable characters")


def _public_jwk(kid: str, key: Ed25519PublicKey) -> dict[str, Any]:
    jwk: dict[str, Any] = OKPAlgorithm.to_jwk(key, as_dict=True)
    return {**jwk, "kid": kid, "alg": ALGORITHM, "use": "sig"}


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidKey(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidKey(f"{what} must be a JSON object")
    return value


# --- signing and verifying ------------------------------------------------------------


def canonical_payload(command: Mapping[str, Any]) -> bytes:
    """What is signed: the RFC 8785 canonical JSON of the command without its
    signature (so key order and whitespace do not matter)."""
    unsigned = {key: value for key, value in command.items() if key != SIGNATURE_FIELD}
    return rfc8785.dumps(unsigned)


def sign_command(
    command: Mapping[str, Any],
    key: SigningKey,
    *,
    now: float,
    ttl: float = DEFAULT_TTL_SECONDS,
) -> dict[str, Any]:
    """The command with a "signature" valid from `now` for `ttl` seconds. Any
    signature it had is replaced. ValueError if the command cannot be put in
    canonical form (a number outside I-JSON's range, a lone surrogate).

    A schedule's template (it has a "schedule" object) is signed as it
    stands, keywords and all: a node verifies a fired command's signed_form."""
    longest = _longest_lifetime(command)
    if not 0 < ttl <= longest:
        raise ValueError(f"a signature's lifetime must be above 0 and at most {longest:g} s")
    issued = math.floor(now)
    header = {"kid": key.kid, "iat": issued, "exp": math.ceil(now + ttl), "typ": None}
    try:
        payload = canonical_payload(command)
    except rfc8785.CanonicalizationError as exc:
        raise ValueError(f"the command cannot be signed: {exc}") from None
    token = jwt.api_jws.PyJWS().encode(payload, key.key, algorithm=ALGORITHM, headers=header)
    protected, _payload, signature = token.split(".")
    return {**command, SIGNATURE_FIELD: f"{protected}..{signature}"}


def verify_command(command: Mapping[str, Any], keys: KeySet, *, now: float) -> str:
    """Check the signature of `command` as of `now` (seconds since the epoch);
    the kid that signed it, or SignatureRejected saying why not."""
    token = command.get(SIGNATURE_FIELD)
    if token is None:
        raise SignatureRejected(Rejection.MISSING)
    protected, signature = _split(token)
    header = _header(protected)
    kid = header["kid"]
    key = keys.get(kid)
    if key is None:
        raise SignatureRejected(Rejection.UNKNOWN_KEY, _quote(kid))
    try:
        payload = canonical_payload(signed_form(command))
    except (rfc8785.CanonicalizationError, RecursionError):
        raise SignatureRejected(
            Rejection.INVALID, "the command has no canonical JSON form"
        ) from None
    attached = f"{protected}.{base64url_encode(payload).decode('ascii')}.{signature}"
    try:
        jwt.api_jws.PyJWS().decode_complete(attached, key, algorithms=[ALGORITHM])
    except jwt.InvalidSignatureError:
        raise SignatureRejected(Rejection.INVALID, "it does not match the command") from None
    except jwt.PyJWTError:
        raise SignatureRejected(Rejection.INVALID, "not a well-formed JWS") from None
    # The header is signed with the payload: its times are the signer's word.
    if now > header["exp"] + MAX_CLOCK_SKEW_SECONDS:
        raise SignatureRejected(Rejection.EXPIRED, f"{_age(now - header['exp'])} ago")
    if header["iat"] > now + MAX_CLOCK_SKEW_SECONDS:
        raise SignatureRejected(
            Rejection.INVALID, f"issued {_age(header['iat'] - now)} in the future"
        )
    if header["iat"] > header["exp"]:
        raise SignatureRejected(Rejection.INVALID, "it expires before it was issued")
    # A signer rounds iat down and exp up: one second over is still its own.
    if header["exp"] - header["iat"] > _longest_lifetime(command) + 1:
        raise SignatureRejected(
            Rejection.INVALID, f"it is valid for longer than {_age(_longest_lifetime(command))}"
        )
    return str(kid)


def _longest_lifetime(command: Mapping[str, Any]) -> float:
    """A command waits in the queue at most as long as SQS keeps it; a
    schedule's template is signed for every firing."""
    return MAX_SCHEDULE_TTL_SECONDS if "schedule" in command else MAX_TTL_SECONDS


def _split(token: Any) -> tuple[str, str]:
    if not isinstance(token, str):
        raise SignatureRejected(Rejection.INVALID, "signature must be a string (a compact JWS)")
    if len(token) > MAX_SIGNATURE_CHARS:
        raise SignatureRejected(Rejection.INVALID, f"longer than {MAX_SIGNATURE_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise SignatureRejected(Rejection.INVALID, "not a compact JWS (header..signature)")
    if parts[1]:
        raise SignatureRejected(
            Rejection.INVALID, "the payload must be detached (header..signature)"
        )
    return parts[0], parts[2]


def _header(protected: str) -> dict[str, Any]:
    """The protected header, checked before any key is looked up (it is not yet
    verified: it only chooses the key and what to refuse outright)."""
    try:
        header = jwt.get_unverified_header(f"{protected}..")
    except jwt.PyJWTError:
        raise SignatureRejected(Rejection.INVALID, "its header is not base64url JSON") from None
    unknown = sorted(set(header) - _HEADER_FIELDS)
    if unknown:
        named = ", ".join(_quote(name) for name in unknown[:3])
        raise SignatureRejected(Rejection.INVALID, f"header field(s) not allowed: {named}")
    if header.get("alg") != ALGORITHM:
        raise SignatureRejected(
            Rejection.INVALID, f"alg must be {ALGORITHM}, got {_quote(header.get('alg'))}"
        )
    if not isinstance(header.get("kid"), str):
        raise SignatureRejected(Rejection.INVALID, "its header has no kid")
    for name in ("iat", "exp"):
        value = header.get(name)
        finite = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
        if isinstance(value, bool) or not finite:
            raise SignatureRejected(Rejection.INVALID, f"its header has no numeric {name}")
    return header


def _quote(value: Any) -> str:
    text = ascii(value)
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 4 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"
