"""The dashboard as an operator sees it: a real headless Chromium on the page
of a real `dashboard` process, with real mock-mode nodes on the moto server.
What the page shows is checked against what happened on the bus and in the
log bucket."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from claude_code_scheduler.client.bus import READER_QUEUE_PREFIX
from claude_code_scheduler.node.process.mockcli import MOCK_COST_USD
from tests.integration.conftest import Stack, command

NODE_ARGS = ["--mock-mode", "--poll-wait-seconds", "1", "--heartbeat-interval", "1"]
# Generous: a slow machine is slow, not wrong.
WAIT_SECONDS = 45.0


def wait_for(driver: Any, what: str, check: Callable[[Any], Any]) -> Any:
    """Polls `check(driver)` until it returns something truthy."""

    def attempt(d: Any) -> Any:
        try:
            return check(d)
        except StaleElementReferenceException:
            return None  # the page re-rendered between find and read

    return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.2).until(
        attempt, message=f"the page never showed {what}"
    )


def text_of(driver: Any, selector: str) -> str:
    elements = driver.find_elements(By.CSS_SELECTOR, selector)
    return " ".join(e.text for e in elements)


def reader_queues(stack: Stack) -> list[str]:
    answer = stack.sqs.list_queues(QueueNamePrefix=READER_QUEUE_PREFIX)
    return list(answer.get("QueueUrls", []))


def run_records(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    listed = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="records/")
    keys = [item["Key"] for item in listed.get("Contents", []) if f"/{run_id}-" in item["Key"]]
    return [
        json.loads(stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()) for key in keys
    ]


def save(driver: Any, folder: Path | None, name: str) -> None:
    if folder is not None:
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.3)  # let the scroll and the last frame paint
        driver.save_screenshot(str(folder / name))


def test_the_page_shows_nodes_output_ends_and_a_cancel(
    browser, stack, start_node, dashboard_factory, screenshots
):
    before = set(reader_queues(stack))
    dashboard = dashboard_factory(stack)
    ours = set(reader_queues(stack)) - before
    assert len(ours) == 1, "the dashboard reads through a temporary queue of its own"

    browser.get(dashboard.url)
    wait_for(browser, "the live stream connected", lambda d: text_of(d, "#connection") == "live")
    assert "No node heard yet" in text_of(browser, "#nodes-empty")

    # A node registers: its row appears, idle.
    node = start_node(stack, *NODE_ARGS, "--node-name", "builder-a", "--max-concurrent-tasks", "2")
    row = f'#nodes tr[data-node-id="{node.node_id}"]'
    wait_for(browser, "the node registering", lambda d: "idle" in text_of(d, row))
    assert "0 / 2" in text_of(browser, row)
    assert "builder-a" in text_of(browser, row)

    # A run whose output arrives over a few seconds: the text is on the page
    # while the run is still going.
    streamed = command(
        run_id=f"stream-{uuid.uuid4().hex[:8]}",
        prompt="summarise the release notes",
        name="release-notes",
        mock={"duration_seconds": 8, "output_bytes": 3000},
    )
    stack.send(streamed)
    card = f'#runs article[data-run-id="{streamed["run_id"]}"]'
    wait_for(
        browser,
        "the run's output while it runs",
        lambda d: "Mock reply to: summarise the release notes" in text_of(d, f"{card} .output"),
    )
    assert stack.of("TaskCompleted", streamed["run_id"]) == []
    stack.poll_events()
    assert stack.of("TaskCompleted", streamed["run_id"]) == [], "seen before the run ended"
    assert "release-notes" in text_of(browser, card)
    assert "busy" in text_of(browser, row)

    # Its end: the card goes, the recent runs table has it, completed, with its cost.
    recent = f'#recent tr[data-run-id="{streamed["run_id"]}"]'
    wait_for(browser, "the run's completion", lambda d: "Completed" in text_of(d, recent))
    assert not browser.find_elements(By.CSS_SELECTOR, card)
    assert f"${MOCK_COST_USD}" in text_of(browser, recent)
    completed = stack.wait_event("TaskCompleted", streamed["run_id"])
    assert completed["data"]["usage"]["total_cost_usd"] == MOCK_COST_USD

    # A failing run, for the table's colours (and a second node for the screenshot).
    failing = command(mock={"duration_seconds": 0.3, "exit_code": 3}, name="lint")
    stack.send(failing)
    start_node(stack, *NODE_ARGS, "--node-name", "builder-b")
    failed_row = f'#recent tr[data-run-id="{failing["run_id"]}"]'
    wait_for(browser, "the failed run", lambda d: "ClaudeError" in text_of(d, failed_row))

    # A long run, cancelled from its card's button (the confirm accepted).
    long_run = command(
        run_id=f"long-{uuid.uuid4().hex[:8]}",
        prompt="refactor the billing module",
        name="billing-refactor",
        mock={"duration_seconds": 40, "output_bytes": 8000},
    )
    stack.send(long_run)
    long_card = f'#runs article[data-run-id="{long_run["run_id"]}"]'
    wait_for(
        browser,
        "the long run's output",
        lambda d: (
            "Mock reply to: refactor the billing module" in text_of(d, f"{long_card} .output")
        ),
    )
    wait_for(browser, "two nodes up", lambda d: text_of(d, "#count-nodes") == "2")
    if screenshots is not None:
        # For the docs: a card with more than its first line in it, light and dark.
        wait_for(browser, "more output", lambda d: "Mock output" in text_of(d, long_card))
        save(browser, screenshots, "dashboard.png")
        browser.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
        )
        save(browser, screenshots, "dashboard-dark.png")
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    browser.find_element(By.CSS_SELECTOR, f"{long_card} button.cancel").click()
    WebDriverWait(browser, 10).until(expected_conditions.alert_is_present())
    alert = browser.switch_to.alert
    assert long_run["run_id"] in alert.text
    alert.accept()
    cancelled_row = f'#recent tr[data-run-id="{long_run["run_id"]}"]'
    wait_for(browser, "the run cancelled", lambda d: "Cancelled" in text_of(d, cancelled_row))
    assert not browser.find_elements(By.CSS_SELECTOR, long_card)
    save(browser, screenshots, "dashboard-cancel.png")

    # What really happened: the bus says Cancelled, from the dashboard, and so does the record.
    failed = stack.wait_event("TaskFailed", long_run["run_id"])["data"]
    assert failed["error"]["type"] == "Cancelled"
    assert failed["cancel"]["reason"] == "cancelled from the dashboard"
    assert stack.of("CancelRequested", long_run["run_id"]), "the request was announced"
    records = run_records(stack, long_run["run_id"])
    assert [r["error_type"] for r in records] == ["Cancelled"]

    # SIGTERM: the process ends, and its queue and subscription with it.
    assert dashboard.stop() == 0, dashboard.stderr
    assert "Traceback" not in dashboard.stderr
    assert not ours & set(reader_queues(stack)), "the temporary queue is removed on exit"
    subscriptions = stack.sns.list_subscriptions_by_topic(TopicArn=stack.topic_arn)
    endpoints = [s["Endpoint"] for s in subscriptions["Subscriptions"]]
    assert not any(READER_QUEUE_PREFIX in e for e in endpoints), "and its subscription"
