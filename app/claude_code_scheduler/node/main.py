"""The node's composition root: start-up checks, the adapters, the Node, signals.

The order matters: everything that can fail with a user's error fails here,
before the node registers; the signal handlers and the subreaper come last,
after the start-up checks, whose own children must not be reaped by the node.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from types import FrameType

from claude_code_scheduler import __version__, logsetup
from claude_code_scheduler.aws.cancels import CancelStore
from claude_code_scheduler.aws.clients import NodeClients, make_node_clients
from claude_code_scheduler.aws.credentials import NodeCredentials
from claude_code_scheduler.aws.logstore import LogStore
from claude_code_scheduler.aws.objects import S3Objects
from claude_code_scheduler.aws.protection import TaskProtection
from claude_code_scheduler.aws.queue import QueueClient
from claude_code_scheduler.aws.secrets import SecretReader
from claude_code_scheduler.aws.topic import BusClient
from claude_code_scheduler.node.config import NodeConfig
from claude_code_scheduler.node.leases import LeaseKeeper, lease_threads
from claude_code_scheduler.node.outbox import Outbox
from claude_code_scheduler.node.process import reaper
from claude_code_scheduler.node.process.environment import child_environment, prepare_work_root
from claude_code_scheduler.node.process.isolation import IsolationPolicy, harden_node
from claude_code_scheduler.node.retries import RetryPolicy
from claude_code_scheduler.node.shutdown import protection_margin
from claude_code_scheduler.node.startup import (
    check_claude,
    check_queue,
    check_run_identities,
    real_mode_warnings,
    run_programs,
)
from claude_code_scheduler.node.trust import TrustedKeys
from claude_code_scheduler.node.worker import Node
from claude_code_scheduler.protocol.events import EcsTask, Event, node_registered

log = logging.getLogger("claude_code_scheduler")


def run_node(config: NodeConfig, ecs_task: EcsTask | None) -> int:
    isolation = isolate_runs(config)
    claude_version = None
    claude_path = None
    if not config.mock_mode:
        claude_path, claude_version = check_claude(config.claude_bin)
        log.info("claude CLI %s at %s", claude_version, claude_path)
        for warning in real_mode_warnings(config, os.environ):
            log.warning(warning)
    probe, reached = run_programs(claude_path)
    prepare_work_root(config.work_dir, isolated=isolation.isolated)
    check_run_identities(
        isolation,
        probe,
        reached,
        config.work_dir,
        child_environment(os.environ, {}, run_marker="probe"),
    )
    for level, line in isolation.describe():
        log.log(level, line)
    threads = lease_threads(config.max_concurrent_tasks)
    clients = make_node_clients(
        region=config.region,
        profile=config.profile,
        endpoint_url=config.endpoint_url,
        lease_connections=threads,
    )
    # Redacted from every log line and run output from now on, as they rotate.
    logsetup.SECRETS.track_credentials(
        NodeCredentials.for_node(region=config.region, profile=config.profile).current
    )
    # Two views of the one queue: the poller's long polls, and the short calls
    # of the lease keeper and the start-up check, each with its own bounds.
    queue = QueueClient(clients.sqs, config.queue.url)
    lease_queue = QueueClient(clients.sqs_leases, config.queue.url)
    queue_attributes = check_queue(lease_queue, config.startup_timeout)
    visibility_timeout = queue_attributes.visibility_timeout
    log.info("queue reachable; visibility timeout %ds", visibility_timeout)
    retries = retry_policy(config, queue_attributes.max_receive_count)
    verifier = trusted_keys(config, clients)
    outbox = Outbox(
        BusClient(clients.sns, config.topic.arn, fifo=config.topic.is_fifo),
        config.node_id,
        config.node_name,
    )
    worker = Node(
        config,
        queue=queue,
        outbox=outbox,
        logs=LogStore(clients.s3, config.log_bucket),
        leases=LeaseKeeper(lease_queue, visibility_timeout, threads=threads),
        # A task may ask for up to the SQS maximum, whatever --task-timeout says.
        # Past a run's deadline: the kill, its upload and event, and a shutdown.
        protection=TaskProtection.from_environment(os.environ, protection_margin(config)),
        registration=registration(config, claude_version=claude_version, ecs_task=ecs_task),
        verifier=verifier,
        isolation=isolation,
        secret_source=SecretReader(clients.secretsmanager, clients.ssm),
        objects=S3Objects(clients.s3),
        retries=retries,
        # Operators' cancel requests, in the log bucket (docs/cancel.md).
        cancels=CancelStore(clients.s3_lookups, config.log_bucket),
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        worker.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if reaper.become_subreaper():
        log.debug("child subreaper: orphaned tool processes reparent to the node")
    return worker.run()


def retry_policy(config: NodeConfig, max_receive_count: int | None) -> RetryPolicy:
    """The fleet's retries (node.retries), bounded by the queue's dead-letter
    queue; an operator who asked for more attempts than it allows is told."""
    policy = RetryPolicy(config.retry_delay, config.retry_max_attempts, max_receive_count)
    allowed = policy.attempts_allowed(None)
    if allowed < config.retry_max_attempts:
        log.warning(
            "--retry-max-attempts %d: the queue's dead-letter queue takes a message after "
            "%d receives, so a task gets at most %d attempts (one receive is kept for a "
            "hand-back)",
            config.retry_max_attempts,
            max_receive_count,
            allowed,
        )
    log.info(
        "retries: %d attempts unless a task says otherwise, the first after %gs",
        allowed,
        config.retry_delay,
    )
    return policy


def trusted_keys(config: NodeConfig, clients: NodeClients) -> TrustedKeys | None:
    """The keys commands must be signed with (docs/signing.md); None: unsigned
    commands run, as they did before --verification-keys."""
    if config.verification_keys is None:
        # INFO, not a warning: unsigned is the default every node starts with
        # until signing is rolled out, and NodeRegistered says so
        # (requires_signatures) to whoever watches the fleet.
        log.info("--verification-keys is not set: commands run without a signature check")
        return None
    secrets = SecretReader(clients.secretsmanager, clients.ssm)
    keys = TrustedKeys.open(config.verification_keys, secrets, config.region)
    log.info("commands must be signed by one of the key ids %s", ", ".join(keys.kids))
    return keys


def isolate_runs(config: NodeConfig) -> IsolationPolicy:
    """Hardens the node (first: before any thread, since no_new_privs is per
    thread and inherited) and decides as whom its runs run (docs/isolation.md);
    what that gives is logged once the start-up checks have passed."""
    for missing in harden_node():
        log.warning("could not harden the node: %s", missing)
    return IsolationPolicy.decide(
        euid=os.geteuid(),
        slots=config.max_concurrent_tasks,
        run_uid_base=config.run_uid_base,
        allow_shared_uid=config.allow_shared_uid,
    )


def registration(
    config: NodeConfig, *, claude_version: str | None, ecs_task: EcsTask | None
) -> Event:
    return node_registered(
        hostname=socket.gethostname(),
        version=__version__,
        mock_mode=config.mock_mode,
        heartbeat_interval=config.heartbeat_interval,
        max_concurrent_tasks=config.max_concurrent_tasks,
        claude_version=claude_version,
        started_at=time.time(),
        ecs=ecs_task,
        requires_signatures=config.verification_keys is not None,
    )
