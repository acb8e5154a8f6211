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

from claude_code_scheduler import __version__
from claude_code_scheduler.aws.clients import make_node_clients
from claude_code_scheduler.aws.logstore import LogStore
from claude_code_scheduler.aws.protection import TaskProtection
from claude_code_scheduler.aws.queue import QueueClient
from claude_code_scheduler.aws.topic import BusClient
from claude_code_scheduler.node.config import MAX_TASK_TIMEOUT_SECONDS, NodeConfig
from claude_code_scheduler.node.leases import LeaseKeeper, lease_threads
from claude_code_scheduler.node.outbox import Outbox
from claude_code_scheduler.node.process import reaper
from claude_code_scheduler.node.startup import check_claude, check_queue, real_mode_warnings
from claude_code_scheduler.node.worker import Node
from claude_code_scheduler.protocol.events import EcsTask, Event, node_registered

log = logging.getLogger("claude_code_scheduler")


def run_node(config: NodeConfig, ecs_task: EcsTask | None) -> int:
    claude_version = None
    if not config.mock_mode:
        path, claude_version = check_claude(config.claude_bin)
        log.info("claude CLI %s at %s", claude_version, path)
        for warning in real_mode_warnings(config, os.environ, os.geteuid()):
            log.warning(warning)
    threads = lease_threads(config.max_concurrent_tasks)
    clients = make_node_clients(
        region=config.region,
        profile=config.profile,
        endpoint_url=config.endpoint_url,
        lease_connections=threads,
    )
    # Two views of the one queue: the poller's long polls, and the short calls
    # of the lease keeper and the start-up check, each with its own bounds.
    queue = QueueClient(clients.sqs, config.queue.url)
    lease_queue = QueueClient(clients.sqs_leases, config.queue.url)
    visibility_timeout = check_queue(lease_queue, config.startup_timeout)
    log.info("queue reachable; visibility timeout %ds", visibility_timeout)
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
        protection=TaskProtection.from_environment(os.environ, MAX_TASK_TIMEOUT_SECONDS),
        registration=registration(config, claude_version=claude_version, ecs_task=ecs_task),
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        worker.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if reaper.become_subreaper():
        log.debug("child subreaper: orphaned tool processes reparent to the node")
    return worker.run()


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
    )
