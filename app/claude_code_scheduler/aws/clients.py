"""Where every boto3 client is made, and how long each kind of call may take.

Every client uses botocore's standard retry mode, which retries one call's
transient failures with backoff and jitter (the lease client makes a single
attempt); what outlasts that (an outage) is retried by the callers (aws.retry,
the lease keeper, the start-up check).

On a network that drops packets without a reset, a call ends only when a
timeout fires, so each kind of call gets bounds of its own (`CallBounds`):
botocore's default read timeout of 60 s would let one hung call outlast a
lease. The bounds assume silence: connect_timeout bounds a connect (and each
send of a body), read_timeout each wait for the answer. A name lookup is not
bounded by either; it is left to the system resolver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
from botocore.config import Config

from claude_code_scheduler.aws.limits import MAX_POLL_WAIT_SECONDS
from claude_code_scheduler.errors import ConfigError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_scheduler import EventBridgeSchedulerClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_ssm import SSMClient

# botocore's standard mode sleeps up to 2**i s (capped at 20 s) before retry i
# (from 0) of a throttled call, less for other errors.
_MAX_BACKOFF_SECONDS = 20.0
# Three attempts in all, for clients made outside this module (scripts/bench.py).
# botocore's `max_attempts` counts only the retries: the {"max_attempts": 3}
# this once was made four attempts.
STANDARD_RETRIES: Any = {"mode": "standard", "total_max_attempts": 3}
# botocore's own connection pool size; more threads than this would open and
# drop connections.
DEFAULT_POOL_CONNECTIONS = 10


@dataclass(frozen=True)
class CallBounds:
    """How long one call of a kind may wait on a silent network."""

    connect: float
    read: float
    attempts: int

    @property
    def seconds(self) -> float:
        """The longest one call can take before it raises: every attempt
        connects slowly and then waits its whole read timeout, with botocore's
        longest backoff between attempts."""
        backoff = sum(min(2.0**i, _MAX_BACKOFF_SECONDS) for i in range(self.attempts - 1))
        return self.attempts * (self.connect + self.read) + backoff

    def config(self, pool_connections: int = DEFAULT_POOL_CONNECTIONS) -> Config:
        return Config(
            # total_max_attempts counts the first try; botocore's max_attempts
            # would count only the retries after it.
            retries={"mode": "standard", "total_max_attempts": self.attempts},
            connect_timeout=self.connect,
            read_timeout=self.read,
            max_pool_connections=pool_connections,
        )


# ChangeMessageVisibility and DeleteMessage (the lease keeper) and
# GetQueueAttributes (the start-up check). SQS answers them in milliseconds;
# 2 s of connect covers one lost SYN (Linux resends it after 1 s) and 3 s of
# read a slow answer. One attempt: each caller retries by its own rule (a
# renewal at once, a delete with backoff, the start-up check until
# --startup-timeout), and botocore's attempts on top would only multiply the
# time one call can keep a lease waiting. The smallest queue visibility timeout
# the node supports is derived from this (node.leases.MIN_VISIBILITY_SECONDS).
LEASE_CALLS = CallBounds(connect=2.0, read=3.0, attempts=1)
# ReceiveMessage long-polls: SQS holds the answer for up to the wait time, so
# the read timeout is the longest wait plus 10 s for the answer itself. A hung
# poll delays only the next receive, never a lease, so it keeps the standard 3
# attempts.
POLL_CALLS = CallBounds(connect=5.0, read=MAX_POLL_WAIT_SECONDS + 10.0, attempts=3)
# SNS Publish answers in well under a second; 10 s of read allows a slow one,
# two attempts a dropped connection. The outbox publishes in order and retries
# through outages itself, so one hung publish holds every later event: with
# these bounds (27 s) it gives up inside the 30 s the node waits for
# NodeRegistered, leaving room for the outbox's own retry.
PUBLISH_CALLS = CallBounds(connect=3.0, read=10.0, attempts=2)
# S3 PutObject / UploadPart (a part is up to 8 MiB, see aws.logstore) answer
# once the whole body is in, and CompleteMultipartUpload keeps its connection
# alive while it works; 30 s of read allows a slow answer to a large part. An
# upload runs in its run's own thread, off the lease and bus paths, and is
# retried through outages by the run, so it keeps the standard 3 attempts.
UPLOAD_CALLS = CallBounds(connect=5.0, read=30.0, attempts=3)
# GetSecretValue and GetParameter: small answers, read before a run starts (a
# task's secrets) or once at start-up (a key set); callers retry outages.
SECRET_CALLS = CallBounds(connect=3.0, read=10.0, attempts=3)
# A cancel's look-up (node.cancels), every 2 s per running run: a few hundred
# bytes or a 404. One short try: the watcher asks again at its next poll, and
# a look-up that hung on the upload client's 30 s x 3 would hold every
# cancel past its 10 s bound.
LOOKUP_CALLS = CallBounds(connect=2.0, read=3.0, attempts=1)
# sts:GetCallerIdentity, once per `cancel` to name who asks: a small answer,
# and the caller names user@host instead when it fails, so a short try.
IDENTITY_CALLS = CallBounds(connect=3.0, read=5.0, attempts=2)
# EventBridge Scheduler's schedule calls (`schedule` and its subcommands):
# small answers, made from a terminal, so a slow one may take its standard 3
# attempts.
SCHEDULER_CALLS = CallBounds(connect=3.0, read=10.0, attempts=3)


@dataclass(frozen=True)
class Clients:
    sqs: SQSClient  # ReceiveMessage and the rest: POLL_CALLS
    sns: SNSClient
    s3: S3Client
    # Made without a network call; used only where a secret is read.
    secretsmanager: SecretsManagerClient
    ssm: SSMClient


@dataclass(frozen=True)
class NodeClients(Clients):
    # The lease keeper's and the start-up check's SQS calls: a client of their
    # own, so that they neither wait behind a long poll for a connection nor
    # share its bounds.
    sqs_leases: SQSClient
    # Cancel look-ups: LOOKUP_CALLS, apart from the uploads' bounds and pool.
    s3_lookups: S3Client


def make_clients(
    *, region: str, profile: str | None = None, endpoint_url: str | None = None
) -> Clients:
    """The clients the operator commands use. With no `endpoint_url`, botocore
    itself reads AWS_ENDPOINT_URL and the per-service AWS_ENDPOINT_URL_SQS and
    friends."""
    return _clients(_session(region, profile), endpoint_url)


def make_identity_client(
    *, region: str, profile: str | None = None, endpoint_url: str | None = None
) -> Any:
    """An STS client for GetCallerIdentity, which needs no IAM permission
    (and is typed Any: the package ships no STS stubs)."""
    return _client(_session(region, profile), "sts", IDENTITY_CALLS.config(), endpoint_url)


def make_scheduler_client(
    *, region: str, profile: str | None = None, endpoint_url: str | None = None
) -> EventBridgeSchedulerClient:
    """The EventBridge Scheduler client of the `schedule` commands."""
    client: EventBridgeSchedulerClient = _client(
        _session(region, profile), "scheduler", SCHEDULER_CALLS.config(), endpoint_url
    )
    return client


def make_node_clients(
    *,
    region: str,
    profile: str | None = None,
    endpoint_url: str | None = None,
    lease_connections: int = DEFAULT_POOL_CONNECTIONS,
) -> NodeClients:
    """The node's clients; `lease_connections` is how many lease calls may be
    in flight at once (the lease keeper's threads)."""
    session = _session(region, profile)
    common = _clients(session, endpoint_url)
    pool = max(DEFAULT_POOL_CONNECTIONS, lease_connections)
    return NodeClients(
        sqs=common.sqs,
        sns=common.sns,
        s3=common.s3,
        secretsmanager=common.secretsmanager,
        ssm=common.ssm,
        sqs_leases=_client(session, "sqs", LEASE_CALLS.config(pool), endpoint_url),
        s3_lookups=_client(session, "s3", LOOKUP_CALLS.config(), endpoint_url),
    )


def _clients(session: boto3.Session, endpoint_url: str | None) -> Clients:
    return Clients(
        sqs=_client(session, "sqs", POLL_CALLS.config(), endpoint_url),
        sns=_client(session, "sns", PUBLISH_CALLS.config(), endpoint_url),
        s3=_client(session, "s3", UPLOAD_CALLS.config(), endpoint_url),
        secretsmanager=_client(session, "secretsmanager", SECRET_CALLS.config(), endpoint_url),
        ssm=_client(session, "ssm", SECRET_CALLS.config(), endpoint_url),
    )


def _session(region: str, profile: str | None) -> boto3.Session:
    try:
        return boto3.Session(profile_name=profile, region_name=region)
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(f"--profile: no AWS profile named {profile!r}") from None


def _client(session: boto3.Session, service: str, config: Config, endpoint_url: str | None) -> Any:
    extra: dict[str, Any] = {"config": config}
    if endpoint_url:
        extra["endpoint_url"] = endpoint_url
    try:
        return session.client(service, **extra)  # type: ignore[call-overload]
    except ValueError as exc:  # botocore's complaint about a malformed endpoint
        raise ConfigError(f"--endpoint-url: {exc}") from None
