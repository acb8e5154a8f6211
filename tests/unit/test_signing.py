"""protocol/signing.py and node/trust.py: signatures over commands, key sets, and
what the node does with a command whose signature does not hold. No network."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm
from unit_support import FakeOutbox, FakeQueue, assert_event_valid, schema_errors

from claude_code_scheduler.aws.names import SecretRef
from claude_code_scheduler.aws.queue import ReceivedMessage
from claude_code_scheduler.cli import cli
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node.leases import LeaseKeeper
from claude_code_scheduler.node.messages import Admission, MessageLifecycle
from claude_code_scheduler.node.trust import REFRESH_SECONDS, TrustedKeys, key_set_reader
from claude_code_scheduler.protocol import parse_command
from claude_code_scheduler.protocol.signing import (
    MAX_CLOCK_SKEW_SECONDS,
    InvalidKey,
    KeySet,
    Rejection,
    SignatureRejected,
    canonical_payload,
    generate_key,
    load_signing_key,
    sign_command,
    verify_command,
)

NOW = 1_750_000_000.0
KEY = generate_key("scheduler-2025-06")
OTHER = generate_key("scheduler-2025-12")
KEYS = KeySet.of_public_jwks([KEY.public_jwk()])


def command(run_id: str = "run-1", **task: Any) -> dict[str, Any]:
    return {"type": "RunTask", "version": 1, "run_id": run_id, "task": {"prompt": "hi", **task}}


def signed(body: dict[str, Any] | None = None, key: Any = KEY, **kwargs: Any) -> dict[str, Any]:
    return sign_command(body or command(), key, now=NOW, **kwargs)


def rejection(body: dict[str, Any], keys: KeySet = KEYS, now: float = NOW) -> SignatureRejected:
    with pytest.raises(SignatureRejected) as caught:
        verify_command(body, keys, now=now)
    return caught.value


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def header_of(body: dict[str, Any]) -> dict[str, Any]:
    return dict(jwt.get_unverified_header(body["signature"]))


def with_header(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The same signature bytes under a different protected header."""
    _protected, _, signature = body["signature"].split(".")
    return {**body, "signature": f"{b64({**header_of(body), **changes})}..{signature}"}


# --- the round trip and the canonical form ------------------------------------------


def test_a_signed_command_verifies_and_names_its_key() -> None:
    body = signed(command(env={"A": "1"}, timeout_seconds=30.0))
    assert verify_command(body, KEYS, now=NOW) == KEY.kid
    header = header_of(body)
    assert header == {
        "alg": "EdDSA",
        "kid": KEY.kid,
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
    }
    protected, payload, signature = body["signature"].split(".")
    assert payload == "" and protected and signature, "the payload is detached"
    assert not schema_errors("RunTask", body)


def test_the_signature_does_not_depend_on_key_order_or_whitespace() -> None:
    body = signed(command(max_turns=3, env={"B": "2", "A": "1"}))
    reordered = json.loads(json.dumps(dict(reversed(list(body.items()))), indent=3))
    reordered["task"] = dict(reversed(list(reordered["task"].items())))
    assert canonical_payload(reordered) == canonical_payload(body)
    assert verify_command(reordered, KEYS, now=NOW) == KEY.kid
    # A number is the same number however it is written.
    assert canonical_payload({"a": 30.0}) == canonical_payload({"a": 30}) == b'{"a":30}'


def test_parse_command_verifies_inside_an_sns_envelope_before_reading_the_task() -> None:
    body = signed(command(prompt="list the files"))
    envelope = json.dumps({"Type": "Notification", "Message": json.dumps(body)})
    seen: list[dict[str, Any]] = []

    def verify(document: dict[str, Any]) -> str:
        seen.append(document)
        return verify_command(document, KEYS, now=NOW)

    parsed = parse_command(envelope, verify)
    assert parsed.task.prompt == "list the files"
    assert seen == [body]
    # Unsigned, the task is never read: the verifier's answer is the error.
    with pytest.raises(SignatureRejected, match=r"^signature missing$") as caught:
        parse_command(json.dumps(command(prompt="")), verify)
    assert caught.value.run_id == "run-1"


def test_a_node_without_keys_ignores_a_signature() -> None:
    assert parse_command(json.dumps(signed())).run_id == "run-1"


# --- what is refused, and with which message --------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b["task"].update(prompt="rm -rf /"),
        lambda b: b["task"].update(env={"EXTRA": "1"}),
        lambda b: b.update(run_id="run-2"),
        lambda b: b["task"].update(permission_mode="bypassPermissions"),
    ],
    ids=["prompt", "added env", "run id", "added field"],
)
def test_a_change_after_signing_is_an_invalid_signature(change: Any) -> None:
    body = json.loads(json.dumps(signed()))
    change(body)
    assert str(rejection(body)) == "signature invalid: it does not match the command"


def test_a_changed_header_is_an_invalid_signature() -> None:
    later = with_header(signed(), exp=int(NOW) + 10 * 365 * 86400)
    assert rejection(later, now=NOW + 7200).reason is Rejection.INVALID
    other_kid = with_header(signed(), kid=OTHER.kid)
    keys = KeySet.of_public_jwks([KEY.public_jwk(), OTHER.public_jwk()])
    assert rejection(other_kid, keys).reason is Rejection.INVALID


def test_a_key_outside_the_set_is_an_unknown_key_even_with_a_known_kid() -> None:
    assert str(rejection(signed(key=OTHER))) == f"unknown key id: '{OTHER.kid}'"
    impostor = generate_key(KEY.kid)  # the right kid, not the right key
    assert rejection(signed(key=impostor)).reason is Rejection.INVALID


def test_expiry_allows_the_clock_skew_and_no_more() -> None:
    body = signed(ttl=60)
    exp = header_of(body)["exp"]
    assert verify_command(body, KEYS, now=exp + MAX_CLOCK_SKEW_SECONDS)
    late = rejection(body, now=exp + MAX_CLOCK_SKEW_SECONDS + 1)
    assert late.reason is Rejection.EXPIRED
    assert str(late).startswith("signature expired: ")


def test_a_signature_from_the_future_beyond_the_skew_is_invalid() -> None:
    body = signed()
    assert verify_command(body, KEYS, now=NOW - MAX_CLOCK_SKEW_SECONDS)
    early = rejection(body, now=NOW - MAX_CLOCK_SKEW_SECONDS - 10)
    assert early.reason is Rejection.INVALID and "in the future" in str(early)


def test_a_missing_signature() -> None:
    assert str(rejection(command())) == "signature missing"


def test_the_none_algorithm_is_refused() -> None:
    unsigned = {"alg": "none", "kid": KEY.kid, "iat": int(NOW), "exp": int(NOW) + 60}
    body = {**command(), "signature": f"{b64(unsigned)}..x"}
    assert str(rejection(body)) == "signature invalid: alg must be EdDSA, got 'none'"


def test_hs256_keyed_with_the_public_key_is_refused() -> None:
    # The key-confusion attack: an HMAC "signed" with the verifier's public key.
    public_bytes = base64.urlsafe_b64decode(KEY.public_jwk()["x"] + "==")
    token = jwt.api_jws.PyJWS().encode(
        canonical_payload(command()),
        public_bytes,
        algorithm="HS256",
        headers={"kid": KEY.kid, "iat": int(NOW), "exp": int(NOW) + 60},
    )
    protected, _, mac = token.split(".")
    body = {**command(), "signature": f"{protected}..{mac}"}
    assert str(rejection(body)) == "signature invalid: alg must be EdDSA, got 'HS256'"


@pytest.mark.parametrize(
    "extra",
    [
        {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}},
        {"b64": False, "crit": ["b64"]},
        {"jku": "https://attacker.example/keys"},
    ],
    ids=["embedded key", "unencoded payload", "key url"],
)
def test_header_fields_that_change_what_is_trusted_are_refused(extra: dict[str, Any]) -> None:
    body = with_header(signed(), **extra)
    rejected = rejection(body)
    assert rejected.reason is Rejection.INVALID and "not allowed" in str(rejected)


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        (42, "must be a string"),
        ("a.b.c", "must be detached"),
        ("only-one-part", "not a compact JWS"),
        ("x" * 5000, "longer than"),
        ("!!!..abc", "not base64url JSON"),
    ],
)
def test_malformed_signatures_are_invalid(token: Any, detail: str) -> None:
    rejected = rejection({**command(), "signature": token})
    assert rejected.reason is Rejection.INVALID and detail in str(rejected)


def test_a_header_without_times_is_invalid() -> None:
    body = with_header(signed(), exp=None)
    assert "no numeric exp" in str(rejection(body))


def test_a_rejection_never_quotes_key_material() -> None:
    secret = KEY.private_jwk()["d"]
    for body in (signed(key=OTHER), with_header(signed(), kid="k" * 500)):
        assert secret not in str(rejection(body))
        assert len(str(rejection(body))) < 120


# --- keys -------------------------------------------------------------------------


def test_a_key_set_with_a_private_key_is_refused() -> None:
    jwks = json.dumps({"keys": [KEY.public_jwk(), OTHER.private_jwk()]})
    with pytest.raises(InvalidKey, match="key 1 is a private key") as caught:
        KeySet.from_jwks(jwks)
    assert OTHER.private_jwk()["d"] not in str(caught.value)


def test_only_ed25519_public_keys_with_a_kid_are_accepted() -> None:
    ec_jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    ed448 = OKPAlgorithm.to_jwk(Ed448PrivateKey.generate().public_key(), as_dict=True)
    no_kid = {k: v for k, v in KEY.public_jwk().items() if k != "kid"}
    cases = [
        ({**ec_jwk, "kid": "ec"}, "not an Ed25519 key"),
        ({**ed448, "kid": "ed448"}, "not an Ed25519 key"),
        (no_kid, "has no kid"),
        ({**KEY.public_jwk(), "alg": "ES256"}, "not for EdDSA"),
        ({**KEY.public_jwk(), "x": "short"}, "not a valid Ed25519 JWK"),
    ]
    for jwk, message in cases:
        with pytest.raises(InvalidKey, match=message):
            KeySet.from_jwks(json.dumps({"keys": [jwk]}))
    with pytest.raises(InvalidKey, match="appears twice"):
        KeySet.of_public_jwks([KEY.public_jwk(), KEY.public_jwk()])
    with pytest.raises(InvalidKey, match="JWKS"):
        KeySet.from_jwks(json.dumps(KEY.public_jwk()))


def test_a_signing_key_must_be_private_and_round_trips() -> None:
    loaded = load_signing_key(json.dumps(KEY.private_jwk()))
    assert loaded.kid == KEY.kid and loaded.public_jwk() == KEY.public_jwk()
    with pytest.raises(InvalidKey, match="public key"):
        load_signing_key(json.dumps(KEY.public_jwk()))
    assert KEY.private_jwk()["d"] not in repr(KEY)


def test_a_signature_lifetime_is_bounded() -> None:
    for ttl in (0, -1, 15 * 86400):
        with pytest.raises(ValueError, match="lifetime"):
            sign_command(command(), KEY, now=NOW, ttl=ttl)


# --- the node's trusted keys (node/trust.py) ---------------------------------------------


class Source:
    """aws.secrets.SecretSource: a value per reference, counted."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.reads: list[SecretRef] = []
        self.fail: Exception | None = None

    def read(self, ref: SecretRef) -> str:
        self.reads.append(ref)
        if self.fail:
            raise self.fail
        return self.value


class Ticks:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def jwks(*keys: Any) -> str:
    return json.dumps({"keys": [key.public_jwk() for key in keys]})


def test_an_unknown_kid_reads_the_key_set_again_at_most_once_a_minute() -> None:
    source, ticks = Source(jwks(KEY)), Ticks()
    trusted = TrustedKeys(
        "/keys", key_set_reader("/keys", source, "us-east-1"), clock=lambda: NOW, monotonic=ticks
    )
    forged = signed(key=generate_key("forged"))
    with pytest.raises(SignatureRejected, match="unknown key id"):
        trusted.verify(forged, sent_at=None)  # the first unknown kid reads again at once
    assert len(source.reads) == 2 and source.reads[0].service == "ssm"
    source.value = jwks(KEY, OTHER)  # a key added to the parameter since
    new_key = signed(key=OTHER)
    with pytest.raises(SignatureRejected, match="unknown key id"):
        trusted.verify(new_key, sent_at=None)  # within the minute: not read again
    assert len(source.reads) == 2
    ticks.now += REFRESH_SECONDS
    assert trusted.verify(new_key, sent_at=None) == OTHER.kid
    assert len(source.reads) == 3
    for _ in range(5):  # a flood of forged kids: no more reads within the minute
        with pytest.raises(SignatureRejected, match="unknown key id"):
            trusted.verify(forged, sent_at=None)
    assert len(source.reads) == 3
    ticks.now += REFRESH_SECONDS
    with pytest.raises(SignatureRejected, match="unknown key id"):
        trusted.verify(forged, sent_at=None)
    assert len(source.reads) == 4


def test_a_failed_reread_keeps_the_keys() -> None:
    source, ticks = Source(jwks(KEY)), Ticks()
    trusted = TrustedKeys(
        "/keys", lambda: source.read(SecretRef("ssm", "/keys", "keys")), monotonic=ticks
    )
    source.fail = OSError("network down")
    ticks.now += REFRESH_SECONDS
    with pytest.raises(SignatureRejected, match="unknown key id"):
        trusted.verify(signed(key=OTHER), sent_at=NOW)
    assert trusted.verify(signed(), sent_at=NOW) == KEY.kid


def test_the_time_judged_is_when_sqs_took_the_message() -> None:
    source = Source(jwks(KEY))
    trusted = TrustedKeys("/keys", lambda: source.read(SecretRef("ssm", "/keys", "keys")))
    body = signed(ttl=60)
    # Taken by SQS in time, received (again, after a hand-back) hours later: runs.
    assert trusted.verify(body, sent_at=NOW + 30) == KEY.kid
    with pytest.raises(SignatureRejected, match="signature expired"):
        trusted.verify(body, sent_at=NOW + 60 + MAX_CLOCK_SKEW_SECONDS + 1)


def test_a_bad_key_set_is_one_line_at_start_up(tmp_path: Path) -> None:
    cases = {
        "private.json": (json.dumps({"keys": [KEY.private_jwk()]}), "is a private key"),
        "garbage.json": ("{not json", "is not JSON"),
        "empty.json": (json.dumps({"keys": []}), "at least one key"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError, match=message) as caught:
            TrustedKeys.open(str(path), Source(""), "us-east-1")
        assert str(caught.value).startswith("--verification-keys: ")
        assert "\n" not in str(caught.value)
        assert KEY.private_jwk()["d"] not in str(caught.value)
    with pytest.raises(ConfigError, match="no such file, and"):
        TrustedKeys.open(str(tmp_path / "missing dir" / "k.json"), Source(""), "us-east-1")
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:keys-AbCdEf"
    with pytest.raises(ConfigError, match="not in the node's region us-east-1"):
        TrustedKeys.open(arn, Source(jwks(KEY)), "us-east-1")


def test_a_file_path_an_arn_and_a_parameter_name_are_told_apart(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(jwks(KEY))
    source = Source(jwks(OTHER))
    assert TrustedKeys.open(str(path), source, "us-east-1").kids == (KEY.kid,)
    assert source.reads == []
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:keys-AbCdEf"
    assert TrustedKeys.open(arn, source, "us-east-1").kids == (OTHER.kid,)
    assert TrustedKeys.open("claude/jwks", source, "us-east-1").kids == (OTHER.kid,)
    assert [ref.service for ref in source.reads] == ["secretsmanager", "ssm"]


# --- the message lifecycle with a verifier --------------------------------------------


def test_a_refused_signature_is_reported_and_its_message_deleted() -> None:
    queue, outbox = FakeQueue(), FakeOutbox()
    leases = LeaseKeeper(queue, 30, clock=lambda: 0.0)
    trusted = TrustedKeys("k", lambda: jwks(KEY), clock=lambda: NOW)
    lifecycle = MessageLifecycle(leases, outbox.publish, verifier=trusted)

    def take(body: dict[str, Any], receipt: str) -> Admission:
        received = ReceivedMessage(receipt, receipt, json.dumps(body), 1, sent_at=NOW)
        return lifecycle.receive(received, stopping=False, has_slot=True).admission

    assert take(signed(command("good")), "r-good") is Admission.START
    assert take(command("unsigned"), "r-unsigned") is Admission.INVALID
    assert take(signed(command("forged"), key=OTHER), "r-forged") is Admission.INVALID
    (missing, unknown) = outbox.events
    assert missing.data["run_id"] == "unsigned"
    assert missing.data["error"] == {"type": "InvalidCommand", "message": "signature missing"}
    assert unknown.data["error"]["message"].startswith("unknown key id")
    for body in outbox.bodies:
        assert_event_valid(body)
    leases.tick()
    assert sorted(c for c in queue.calls if c[0] == "delete") == [
        ("delete", "r-forged"),
        ("delete", "r-unsigned"),
    ]


# --- keys generate / keys public -------------------------------------------------------


def test_keys_generate_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "private.jwk"
    result = runner.invoke(cli, ["keys", "generate", "--kid", "k-1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    key = load_signing_key(out.read_text())
    public = KeySet.from_jwks(result.stdout)
    assert public.kids == ("k-1",)
    assert verify_command(sign_command(command(), key, now=NOW), public, now=NOW) == "k-1"
    assert key.private_jwk()["d"] not in result.stdout
    again = runner.invoke(cli, ["keys", "generate", "--kid", "k-2", "--out", str(out)])
    assert isinstance(again.exception, ConfigError) and "cannot create" in str(again.exception)
    assert load_signing_key(out.read_text()).kid == "k-1", "an existing key is never replaced"


def test_keys_public_merges_key_sets_and_private_keys(tmp_path: Path) -> None:
    nodes, new = tmp_path / "nodes.jwks", tmp_path / "new.jwk"
    nodes.write_text(jwks(KEY))
    new.write_text(json.dumps(OTHER.private_jwk()))
    result = CliRunner().invoke(cli, ["keys", "public", "--key", str(nodes), "--key", str(new)])
    assert result.exit_code == 0, result.output
    assert KeySet.from_jwks(result.stdout).kids == tuple(sorted((KEY.kid, OTHER.kid)))
    assert OTHER.private_jwk()["d"] not in result.stdout
