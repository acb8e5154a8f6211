"""The node: registration, the poll loop, heartbeats and the shutdown order.

Threads and what each owns:
- main: waits for a stop signal, then runs the shutdown order below;
- poller: ReceiveMessage, only while a run slot is free; each message goes to
  the message lifecycle (messages.py), which decides what becomes of it;
- leases: every SQS write (extend, delete, release), as the lifecycle decides;
- heartbeat: NodeHeartbeat every interval, during runs too;
- cancels: looks up an operator's cancel for each running run (node.cancels);
- outbox: the one SNS publisher, in order, through outages;
- http (with --http-port): /metrics, /healthz and /readyz (node.http);
- one thread per run: the child process, its log and its terminal event.

Shutdown order (SIGTERM or SIGINT):
1. stop receiving: the poller issues no new receive; what the poll in flight
   brings back is released at once; /readyz answers 503 from here on;
2. idle: go straight to 4;
3. busy: let runs finish for up to `shutdown_timeout` (a second signal skips
   this; a cancel still stops a run meanwhile); then terminate what is left,
   all at once, upload its log, publish TaskFailed NodeShutdown and hand its
   message back;
4. stop the cancel watcher (without waiting on a lookup in flight) and
   heartbeats, publish NodeDeregistered, close the outbox (nothing is
   published after this, and what it gave up on counts as not delivered, so
   its message goes back);
5. wait for the poll in flight to return; release whatever run is still
   held; give the lease keeper a few seconds for its last writes;
6. stop the HTTP server (within half a second: node.http), last, so that
   /readyz says "draining" (and /healthz, from step 4, "deregistered") for
   as long as there is a node to ask; exit 0.

Every step waits on one timeline that starts at the first signal (see
node.shutdown), so the node exits within `shutdown_timeout + kill_grace +
SHUTDOWN_MARGIN_SECONDS` however many runs it has: runs are stopped
together, never one after another.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from claude_code_scheduler.aws.errors import describe_error, error_code
from claude_code_scheduler.aws.logstore import LogUploader
from claude_code_scheduler.aws.objects import ObjectReader
from claude_code_scheduler.aws.protection import TaskProtection
from claude_code_scheduler.aws.queue import MessageQueue, ReceivedMessage
from claude_code_scheduler.aws.retry import full_jitter
from claude_code_scheduler.aws.secrets import SecretSource
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node import health
from claude_code_scheduler.node.cancels import CANCEL_POLL_SECONDS, CancelWatcher
from claude_code_scheduler.node.config import NodeConfig
from claude_code_scheduler.node.control import CancelLookup, RunControl
from claude_code_scheduler.node.http import StatusServer
from claude_code_scheduler.node.leases import LeaseKeeper
from claude_code_scheduler.node.messages import Admission, CommandVerifier, MessageLifecycle
from claude_code_scheduler.node.metrics import METRICS, queue_wait
from claude_code_scheduler.node.outbox import EventSink
from claude_code_scheduler.node.process import reaper
from claude_code_scheduler.node.process.isolation import IsolationPolicy
from claude_code_scheduler.node.retries import RetryPolicy
from claude_code_scheduler.node.runs import TaskRun
from claude_code_scheduler.node.shutdown import (
    FINAL_PUBLISH_SECONDS,
    FINAL_WRITES_SECONDS,
    GIVE_UP_SECONDS,
    HAND_BACK_SECONDS,
    ShutdownBudget,
)
from claude_code_scheduler.protocol import RunTask
from claude_code_scheduler.protocol.events import (
    Event,
    NodeCounters,
    NodeStatus,
    node_deregistered,
    node_heartbeat,
)

log = logging.getLogger(__name__)

# How long start-up waits for the bus to take NodeRegistered.
REGISTRATION_SECONDS = 30.0
IDLE_WAIT = 0.5


def receive_backoff(failures: int) -> float:
    """Seconds to wait after `failures` receives in a row failed."""
    return full_jitter(failures, base=1.0, cap=30.0)


@dataclass
class NodeStats:
    started: float = field(default_factory=time.monotonic)
    completed: int = 0
    failed: int = 0
    # What the runs' result lines said they cost (RunOutcome.cost_usd), summed.
    cost_usd: float = 0.0


@dataclass
class _ActiveRun:
    thread: threading.Thread
    control: RunControl
    # When the run's own timeout ends it (the node's clock): what task
    # protection must cover.
    deadline: float
    # The run slot, whose uid the run runs as (isolation.py): one run at a time.
    slot: int = 0


class Node:
    def __init__(
        self,
        config: NodeConfig,
        *,
        queue: MessageQueue,
        outbox: EventSink,
        logs: LogUploader,
        leases: LeaseKeeper,
        registration: Event,
        protection: TaskProtection | None = None,
        verifier: CommandVerifier | None = None,
        isolation: IsolationPolicy | None = None,
        secret_source: SecretSource | None = None,
        objects: ObjectReader | None = None,
        retries: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        cancels: CancelLookup | None = None,
        cancel_poll_seconds: float = CANCEL_POLL_SECONDS,
    ) -> None:
        """`isolation`: as whom each slot's runs run; by default the node's own uid.
        `objects` reads archive workspaces (node.workspace.archive). `retries`:
        by default the config's, with no dead-letter queue to stay below.
        `cancels`: where operators' cancel requests are looked up, before a
        run and while it runs (None: runs cannot be cancelled), every
        `cancel_poll_seconds` while they run."""
        self._config = config
        # Reads task.secrets for each run (node.secrets).
        self._secret_source = secret_source
        self._objects = objects
        self._isolation = isolation or IsolationPolicy(
            False, config.max_concurrent_tasks, config.run_uid_base, os.geteuid()
        )
        self._protection = protection or TaskProtection(None, margin_seconds=0.0)
        self._queue = queue
        self._outbox = outbox
        self._logs = logs
        self._leases = leases
        self._retries = retries or RetryPolicy(config.retry_delay, config.retry_max_attempts)
        self._messages = MessageLifecycle(
            leases, outbox.publish, verifier=verifier, retries=self._retries
        )
        self._registration = registration
        self._clock = clock
        self._stats = NodeStats(started=clock())
        self._stop = threading.Event()
        self._force = threading.Event()
        self._stop_reason = "stopped"
        self._stopped_at: float | None = None
        # The bus took NodeRegistered: what /readyz waits for.
        self._registered = threading.Event()
        self._http = (
            None
            if config.http_port is None
            else StatusServer(
                config.http_host,
                config.http_port,
                METRICS.registry,
                health=lambda: health.check(config.state_path),
                ready=self.readiness,
            )
        )
        self._lock = threading.Condition()
        self._active: dict[str, _ActiveRun] = {}
        self._poller = threading.Thread(target=self._poll_loop, name="poller", daemon=True)
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="heartbeat", daemon=True
        )
        self._heartbeat_stop = threading.Event()
        self._cancels = cancels
        self._cancel_watcher = (
            None
            if cancels is None
            else CancelWatcher(cancels, self._running_controls, interval=cancel_poll_seconds)
        )

    # --- signals: only set events ------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Called from a signal handler: sets events and nothing else."""
        if self._stop.is_set():
            self._force.set()
        else:
            self._stop_reason = reason
            self._stopped_at = self._clock()
            self._stop.set()

    # --- main ---------------------------------------------------------------

    def run(self) -> int:
        if self._http is not None:
            self._http.start()
        METRICS.watch_slots(self._run_count, self._config.max_concurrent_tasks)
        self._outbox.start()
        registered = self._outbox.publish(self._registration, caller_reports_drop=True)
        if not registered.wait(REGISTRATION_SECONDS):
            # A node that cannot speak on the bus must not take work: every
            # run's terminal event would be lost.
            self._outbox.close(self._clock())
            raise ConfigError(
                f"--topic-arn: could not publish NodeRegistered: {registered.error or 'timed out'}"
            )
        log.info("node registered", extra={"node_id": self._config.node_id})
        self._registered.set()
        self._write_state("idle")
        self._leases.start()
        self._heartbeat.start()
        if self._cancel_watcher is not None:
            self._cancel_watcher.start()
        self._poller.start()
        while not self._stop.wait(IDLE_WAIT):
            pass
        return self._shutdown(self._budget())

    def _budget(self) -> ShutdownBudget:
        # The poll loop's wait notices the signal up to IDLE_WAIT late; the
        # timeline starts at the signal itself where it was recorded.
        signalled = self._stopped_at if self._stopped_at is not None else self._clock()
        return ShutdownBudget(signalled, self._config.shutdown_timeout, self._config.kill_grace)

    def _shutdown(self, budget: ShutdownBudget) -> int:
        """Steps 2 to 5 of the order at the top of this module."""
        log.info("stopping (%s)", self._stop_reason)
        if self._busy():
            self._drain(budget)
        if self._cancel_watcher is not None:
            self._cancel_watcher.stop()
        self._heartbeat_stop.set()
        self._heartbeat.join(budget.left(self._clock() + 5.0, self._clock()))
        self._outbox.publish(node_deregistered(self._stop_reason, self._counters()))
        closing_by = budget.exit_by - FINAL_WRITES_SECONDS - 5.0
        self._outbox.close(min(self._clock() + FINAL_PUBLISH_SECONDS, closing_by))
        self._write_state("deregistered")
        log.info("node deregistered")
        # boto3 cannot cancel a long poll; abandoning it would hide what it
        # returns for a whole visibility timeout, so wait for it to come back:
        # it began before the signal, so it answers within its wait and read
        # bound of the signal.
        poll_returns_by = budget.signalled + self._config.poll_wait_seconds + 10.0
        self._poller.join(budget.left(min(poll_returns_by, closing_by), self._clock()))
        if self._poller.is_alive():
            log.warning("the receive in flight did not return; what it brings reappears later")
        self._messages.close()
        self._leases.stop(min(self._clock() + FINAL_WRITES_SECONDS, budget.exit_by))
        if self._http is not None:
            self._http.stop()
        return 0

    def _drain(self, budget: ShutdownBudget) -> None:
        log.info("waiting up to %gs for runs to finish", self._config.shutdown_timeout)
        with self._lock:
            while self._active and not self._force.is_set() and self._clock() < budget.runs_stop_by:
                self._lock.wait(0.2)
            left = list(self._active.items())
        for run_id, active in left:
            log.warning("terminating run at shutdown", extra={"run_id": run_id})
            active.control.cancel.set()
        # Terminated together, so these waits overlap: the time is the
        # slowest run's, not the sum of all of them.
        hand_backs_by = min(
            budget.hand_backs_by, self._clock() + self._config.kill_grace + HAND_BACK_SECONDS
        )
        for _, active in left:
            active.thread.join(budget.left(hand_backs_by, self._clock()))
        for _, active in left:
            active.control.give_up.set()
        given_up_by = self._clock() + GIVE_UP_SECONDS
        for _, active in left:
            active.thread.join(budget.left(given_up_by, self._clock()))

    # --- polling ------------------------------------------------------------

    def _free_slots(self) -> int:
        return self._config.max_concurrent_tasks - len(self._active)

    def _poll_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            with self._lock:
                while self._free_slots() <= 0 and not self._stop.is_set():
                    self._lock.wait(IDLE_WAIT)
                free = self._free_slots()
            if self._stop.is_set():
                return
            try:
                messages = self._queue.receive(free, self._config.poll_wait_seconds)
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("receive failed: %s", error_code(exc))
                self._stop.wait(receive_backoff(failures))
                continue
            for message in messages:
                try:
                    self.take(message)
                except Exception:
                    # The loop's edge: a bad message never stops the poller.
                    log.exception(
                        "could not take a message", extra={"message_id": message.message_id}
                    )

    def take(self, message: ReceivedMessage) -> None:
        """One received message: the lifecycle decides, the node starts the run."""
        with self._lock:
            has_slot = self._free_slots() > 0
        METRICS.message_received(message.receive_count)
        received = self._messages.receive(message, stopping=self._stop.is_set(), has_slot=has_slot)
        if received.admission is Admission.INVALID:
            METRICS.command_refused(received.run_id)
            with self._lock:
                self._stats.failed += 1
        elif received.command is not None:
            try:
                self._start_run(received.command, message.receive_count, message.sent_at)
            except Exception as exc:
                log.exception("could not start a run", extra={"run_id": received.run_id})
                self._messages.run_crashed(received.command.run_id, describe_error(exc))
                METRICS.run_crashed(received.command.run_id, queue_wait(message.sent_at))
                with self._lock:
                    self._stats.failed += 1

    def _free_slot(self) -> int:
        """The lowest slot no active run holds (called with the lock held). A
        slot is free once its run's thread ended, and a run's thread ends only
        after every process of the run is gone: the next run of the slot, under
        the same uid, finds nothing of the last."""
        taken = {active.slot for active in self._active.values()}
        return min(set(range(self._config.max_concurrent_tasks)) - taken)

    def _start_run(self, command: RunTask, attempt: int, sent_at: float | None = None) -> None:
        control = RunControl()
        with self._lock:  # only the poller starts runs: the slot stays free until taken below
            slot = self._free_slot()
        run = TaskRun(
            self._config,
            command,
            attempt,
            outbox=self._outbox,
            logs=self._logs,
            messages=self._messages,
            control=control,
            identity=self._isolation.identity(slot),
            secret_source=self._secret_source,
            objects=self._objects,
            retries=self._retries,
            clock=self._clock,
            cancels=self._cancels,
            sent_at=sent_at,
        )
        waited = queue_wait(sent_at)
        METRICS.run_queued(waited)
        thread = threading.Thread(
            target=self._run_thread,
            args=(run, waited),
            name=f"run-{command.run_id}",
            daemon=True,
        )
        timeout = command.task.timeout_seconds or self._config.task_timeout
        with self._lock:
            self._active[command.run_id] = _ActiveRun(
                thread, control, self._clock() + timeout, slot
            )
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._active.pop(command.run_id, None)
            raise

    def _busy(self) -> bool:
        return self._run_count() > 0

    def _run_count(self) -> int:
        with self._lock:
            return len(self._active)

    def _running_controls(self) -> dict[str, RunControl]:
        with self._lock:
            return {run_id: active.control for run_id, active in self._active.items()}

    def _run_deadlines(self) -> list[float]:
        with self._lock:
            return [active.deadline for active in self._active.values()]

    def _run_thread(self, run: TaskRun, waited: float | None = None) -> None:
        """`waited`: the run's queue wait (node.metrics.queue_wait)."""
        completed = False
        cost_usd = 0.0
        self._protection.sync(self._run_deadlines)
        try:
            outcome = run.execute()
            completed, cost_usd = outcome.completed, outcome.cost_usd
        except Exception as exc:
            log.exception("run crashed", extra={"run_id": run.run_id})
            self._messages.run_crashed(run.run_id, describe_error(exc))
            METRICS.run_crashed(run.run_id, waited)
        else:
            METRICS.run_ended(outcome.event, waited)
        finally:
            with self._lock:
                self._active.pop(run.run_id, None)
                self._stats.cost_usd += cost_usd
                if completed:
                    self._stats.completed += 1
                else:
                    self._stats.failed += 1
                self._lock.notify_all()
            if not self._busy():
                # Every orphan now is a leftover of a run that ended, even one
                # that shed the run's marker.
                reaper.kill_orphans()
            self._protection.sync(self._run_deadlines)

    def readiness(self) -> health.Health:
        """/readyz: registered and not draining."""
        if self._stop.is_set():
            return health.Health(False, f"draining ({self._stop_reason})")
        if not self._registered.is_set():
            return health.Health(False, "not registered yet")
        return health.Health(True, f"registered; {self._run_count()} run(s)")

    # --- heartbeats -------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._heartbeat_stop.wait(self._config.heartbeat_interval):
            beat = self.heartbeat()
            self._outbox.publish(beat)
            self._write_state(beat.data["status"])
            # Retries a protection call that failed, and ends protection the
            # ECS agent refused to change while runs were ending.
            self._protection.sync(self._run_deadlines)

    def _write_state(self, status: str) -> None:
        """The health check's view of this node; a failure to write is logged,
        and shows up as an unhealthy container rather than a dead node."""
        try:
            health.write_state(
                self._config.state_path,
                {
                    "node_id": self._config.node_id,
                    "status": status,
                    "last_heartbeat": time.time(),
                    "heartbeat_interval": self._config.heartbeat_interval,
                },
            )
        except OSError as exc:
            log.warning("could not write the state file: %s", exc)

    def heartbeat(self) -> Event:
        with self._lock:
            running = sorted(self._active)
        status = NodeStatus.BUSY if running else NodeStatus.IDLE
        if self._stop.is_set():
            status = NodeStatus.DRAINING
        return node_heartbeat(status, running, self._counters())

    def _counters(self) -> NodeCounters:
        with self._lock:
            return NodeCounters(
                uptime_seconds=self._clock() - self._stats.started,
                tasks_completed=self._stats.completed,
                tasks_failed=self._stats.failed,
                total_cost_usd=self._stats.cost_usd,
            )
