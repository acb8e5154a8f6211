"""The dashboard in a real headless browser: Debian's Chromium and
ChromeDriver, driven by Selenium, against `claude-code-scheduler dashboard`
as a process on the integration suite's moto server, with real mock-mode
nodes.

Where Chromium or ChromeDriver is missing, the browser tests fail under
CI=true and are skipped elsewhere, with the reason printed at the end of the
run (scripts/install-system-packages.sh installs both). Selenium Manager is
never asked for anything: the browser and the driver are given by path, and
it is told to stay offline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.integration.conftest import free_port, moto_endpoint, node_env, stack, start_node

__all__ = ["moto_endpoint", "stack", "start_node"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1400, 960)
# DASHBOARD_SCREENSHOTS=docs/images writes the docs' screenshots from a run.
SCREENSHOTS_ENVVAR = "DASHBOARD_SCREENSHOTS"

# Selenium Manager would otherwise look for a driver and browser online.
os.environ.setdefault("SE_OFFLINE", "true")
os.environ.setdefault("SE_AVOID_STATS", "true")

_skip_reasons: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for reason in _skip_reasons:
        terminalreporter.write_line(f"tests/browser skipped: {reason}", yellow=True)


def _missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install {package})"
    try:
        import selenium  # noqa: F401, PLC0415
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="session")
def browser_available() -> None:
    reason = _missing()
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true and the browser tests need Chromium: {reason}", pytrace=False)
    if reason not in _skip_reasons:
        _skip_reasons.append(reason)
    pytest.skip(reason)


@pytest.fixture
def browser(browser_available: None, tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--no-first-run",
        "--no-default-browser-check",
        "--metrics-recording-only",
        "--no-pings",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Dashboard:
    url: str
    process: subprocess.Popen[bytes]
    stderr_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout)


def start_dashboard(stack: Any, tmp_path: Path, *args: str) -> Dashboard:
    """`claude-code-scheduler dashboard` as a process on a free loopback
    port, reading the stack's control bus and log bucket."""
    port = free_port()
    stderr_path = tmp_path / f"dashboard-{port}.log"
    argv = [
        sys.executable,
        "-m",
        "claude_code_scheduler",
        "dashboard",
        "--port",
        str(port),
        "--control-bus-arn",
        stack.topic_arn,
        "--log-bucket",
        stack.bucket,
        *args,
    ]
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            argv, env=node_env(stack), stdout=subprocess.DEVNULL, stderr=stderr
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}api/state", timeout=2).close()
            return Dashboard(url, process, stderr_path)
        except urllib.error.HTTPError:
            return Dashboard(url, process, stderr_path)  # it answers (with --token, 401)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                pytest.fail(f"the dashboard did not start: {stderr_path.read_text()}")
            time.sleep(0.1)


@pytest.fixture
def dashboard_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Dashboard] = []

    def start(stack: Any, *args: str) -> Dashboard:
        dashboard = start_dashboard(stack, tmp_path, *args)
        started.append(dashboard)
        return dashboard

    yield start
    for dashboard in started:
        if dashboard.process.poll() is None:
            dashboard.process.kill()
            dashboard.process.wait(10)


@pytest.fixture
def screenshots() -> Path | None:
    """Where to save the docs' screenshots, when asked (never in CI by default)."""
    folder = os.environ.get(SCREENSHOTS_ENVVAR)
    if not folder:
        return None
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path
