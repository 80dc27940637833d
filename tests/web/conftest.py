"""The web view's test stack: a real nats-server, master, two agents and ``natsched web``, all
real processes, shared by a test module; one headless Debian chromium per module.

Playwright drives the chromium that ``.ci/run`` installs (``/usr/bin/chromium``), with the
flags this machine's closed network needs; it never downloads a browser.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from natsched.embedded import EmbeddedServer, free_port
from tests.conftest import Process, wait_for_api

BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("NATSCHED_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Set to a folder (e.g. docs) to save a screenshot of each page there (README pictures).
SCREENSHOTS = os.environ.get("NATSCHED_WEB_SCREENSHOTS")


@dataclass
class Stack:
    """Every process of one module's natsched, and how to reach it."""

    root: Path
    nats: EmbeddedServer
    web_url: str
    processes: list[Process] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {**os.environ, "NATS_URL": self.nats.url}

    def start(self, name: str, *argv: str) -> Process:
        process = Process([str(BIN / argv[0]), *argv[1:]], self.env(), self.root / f"{name}.log")
        self.processes.append(process)
        return process

    def cli(self, *args: str) -> str:
        """Run a natsched command; its stdout (fails the test on a non-zero exit)."""
        import subprocess

        result = subprocess.run(
            [str(BIN / "natsched"), *args], env=self.env(), capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr + result.stdout
        return result.stdout

    def apply(self, content: str) -> None:
        path = self.root / f"jobs-{time.monotonic_ns()}.toml"
        path.write_text(content)
        self.cli("apply", "-f", str(path))


def wait_http(url: str, process: Process, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.popen.poll() is not None:
            raise RuntimeError(f"natsched web exited: {process.output()}")
        try:
            with urllib.request.urlopen(url + "api/session", timeout=1) as reply:  # noqa: S310 - localhost
                json.load(reply)
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("web")
    nats = EmbeddedServer(data_dir=root / "nats", port=free_port(), log_file=root / "nats.log")
    nats.start()
    port = free_port()
    stack = Stack(root=root, nats=nats, web_url=f"http://127.0.0.1:{port}/")
    try:
        master = stack.start("master", "natsched", "master")
        wait_for_api(nats.url, master)
        for agent in ("a1", "a2"):
            stack.start(agent, "natsched-agent", "--name", agent, "--state-dir", str(root / agent))
        web = stack.start("web", "natsched", "web", "--listen", f"127.0.0.1:{port}", "--actions")
        wait_http(stack.web_url, web)
        yield stack
    finally:
        for process in reversed(stack.processes):
            process.terminate()
        nats.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"the page raised: {errors}"


def open_page(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)


def screenshot(page: Page, name: str) -> None:
    """Save the page for the README when NATSCHED_WEB_SCREENSHOTS names a folder."""
    if SCREENSHOTS:
        page.wait_for_timeout(500)  # let graphs and timelines finish drawing
        page.screenshot(path=str(Path(SCREENSHOTS) / f"web-{name}.png"), full_page=True)
