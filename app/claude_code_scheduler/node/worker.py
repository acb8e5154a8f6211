"""The node: registration, the poll loop, heartbeats and the shutdown order.

Threads and what each owns:
- main: waits for a stop signal, then runs the shutdown order below;
- poller: ReceiveMessage, only while a run slot is free; each message goes to
  the message lifecycle (messages.py), which decides what becomes of it;
- leases: every SQS write (extend, delete, release), as the lifecycle decides;
- heartbeat: NodeHeartbeat every interval, during runs too;
- outbox: the one SNS publisher, in order, through outages;
- one thread per run: the child process, its log and its terminal event.

Shutdown order (SIGTERM or SIGINT):
1. stop receiving: the poller issues no new receive; what the poll in flight
   brings back is released at once;
2. idle: go straight to 4;
3. busy: let runs finish for up to `shutdown_timeout` (a second signal skips
   this); then terminate what is left, upload its log, publish TaskFailed
   NodeShutdown and hand its message back;
4. stop heartbeats, publish NodeDeregistered, close the outbox (nothing is
   published after this, and what it gave up on counts as not delivered, so
   its message goes back);
5. wait for the poll in flight to return; release whatever run is still
   held; give the lease keeper a few seconds for its last writes; exit 0.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from claude_code_scheduler.aws.errors import describe_error, error_code
from claude_code_scheduler.aws.logstore import LogUploader
from claude_code_scheduler.aws.protection import TaskProtection
from claude_code_scheduler.aws.queue import MessageQueue, ReceivedMessage
from claude_code_scheduler.aws.retry import full_jitter
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node import health
from claude_code_scheduler.node.config import NodeConfig
from claude_code_scheduler.node.leases import LeaseKeeper
from claude_code_scheduler.node.messages import Admission, MessageLifecycle
from claude_code_scheduler.node.outbox import EventSink
from claude_code_scheduler.node.process import reaper
from claude_code_scheduler.node.runs import RunControl, TaskRun
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
# How long the closing events may wait for the bus before the node gives up.
FINAL_PUBLISH_SECONDS = 5.0
# Extra time for a terminated run to upload its log and publish its event.
HAND_BACK_SECONDS = 10.0
# How long the last SQS writes (the releases of step 5) may take.
FINAL_WRITES_SECONDS = 5.0
IDLE_WAIT = 0.5


def receive_backoff(failures: int) -> float:
    """Seconds to wait after `failures` receives in a row failed."""
    return full_jitter(failures, base=1.0, cap=30.0)


@dataclass
class NodeStats:
    started: float = field(default_factory=time.monotonic)
    completed: int = 0
    failed: int = 0


@dataclass
class _ActiveRun:
    thread: threading.Thread
    control: RunControl


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._protection = protection or TaskProtection(None, 1)
        self._queue = queue
        self._outbox = outbox
        self._logs = logs
        self._leases = leases
        self._messages = MessageLifecycle(leases, outbox.publish)
        self._registration = registration
        self._clock = clock
        self._stats = NodeStats(started=clock())
        self._stop = threading.Event()
        self._force = threading.Event()
        self._stop_reason = "stopped"
        self._lock = threading.Condition()
        self._active: dict[str, _ActiveRun] = {}
        self._poller = threading.Thread(target=self._poll_loop, name="poller", daemon=True)
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="heartbeat", daemon=True
        )
        self._heartbeat_stop = threading.Event()

    # --- signals: only set events ------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Called from a signal handler: sets events and nothing else."""
        if self._stop.is_set():
            self._force.set()
        else:
            self._stop_reason = reason
            self._stop.set()

    # --- main ---------------------------------------------------------------

    def run(self) -> int:
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
        self._write_state("idle")
        self._leases.start()
        self._heartbeat.start()
        self._poller.start()
        while not self._stop.wait(IDLE_WAIT):
            pass
        return self._shutdown()

    def _shutdown(self) -> int:
        """Steps 2 to 5 of the order at the top of this module."""
        log.info("stopping (%s)", self._stop_reason)
        if self._busy():
            self._drain()
        self._heartbeat_stop.set()
        self._heartbeat.join(5.0)
        self._outbox.publish(node_deregistered(self._stop_reason, self._counters()))
        self._outbox.close(self._clock() + FINAL_PUBLISH_SECONDS)
        self._write_state("deregistered")
        log.info("node deregistered")
        # boto3 cannot cancel a long poll; abandoning it would hide what it
        # returns for a whole visibility timeout, so wait for it to come back.
        self._poller.join(self._config.poll_wait_seconds + 10.0)
        self._messages.close()
        self._leases.stop(self._clock() + FINAL_WRITES_SECONDS)
        return 0

    def _drain(self) -> None:
        deadline = self._clock() + self._config.shutdown_timeout
        log.info("waiting up to %gs for runs to finish", self._config.shutdown_timeout)
        with self._lock:
            while self._active and not self._force.is_set() and self._clock() < deadline:
                self._lock.wait(0.2)
            left = list(self._active.items())
        for run_id, active in left:
            log.warning("terminating run at shutdown", extra={"run_id": run_id})
            active.control.cancel.set()
        hard_deadline = self._clock() + self._config.kill_grace + HAND_BACK_SECONDS
        for _, active in left:
            active.thread.join(max(0.0, hard_deadline - self._clock()))
        for _, active in left:
            active.control.give_up.set()
            active.thread.join(5.0)

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
        received = self._messages.receive(message, stopping=self._stop.is_set(), has_slot=has_slot)
        if received.admission is Admission.INVALID:
            with self._lock:
                self._stats.failed += 1
        elif received.command is not None:
            try:
                self._start_run(received.command, message.receive_count)
            except Exception as exc:
                log.exception("could not start a run", extra={"run_id": received.run_id})
                self._messages.run_crashed(received.command.run_id, describe_error(exc))
                with self._lock:
                    self._stats.failed += 1

    def _start_run(self, command: RunTask, attempt: int) -> None:
        control = RunControl()
        run = TaskRun(
            self._config,
            command,
            attempt,
            outbox=self._outbox,
            logs=self._logs,
            messages=self._messages,
            control=control,
            clock=self._clock,
        )
        thread = threading.Thread(
            target=self._run_thread, args=(run,), name=f"run-{command.run_id}", daemon=True
        )
        with self._lock:
            self._active[command.run_id] = _ActiveRun(thread, control)
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._active.pop(command.run_id, None)
            raise

    def _busy(self) -> bool:
        with self._lock:
            return bool(self._active)

    def _run_thread(self, run: TaskRun) -> None:
        completed = False
        self._protection.sync(self._busy)
        try:
            completed = run.execute().completed
        except Exception as exc:
            log.exception("run crashed", extra={"run_id": run.run_id})
            self._messages.run_crashed(run.run_id, describe_error(exc))
        finally:
            with self._lock:
                self._active.pop(run.run_id, None)
                if completed:
                    self._stats.completed += 1
                else:
                    self._stats.failed += 1
                self._lock.notify_all()
            if not self._busy():
                # Every orphan now is a leftover of a run that ended, even one
                # that shed the run's marker.
                reaper.kill_orphans()
            self._protection.sync(self._busy)

    # --- heartbeats -------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._heartbeat_stop.wait(self._config.heartbeat_interval):
            beat = self.heartbeat()
            self._outbox.publish(beat)
            self._write_state(beat.data["status"])

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
            )
