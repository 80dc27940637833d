"""The web view in a real browser (headless Debian chromium) against real processes.

Jobs append ``$NATSCHED_RUN_ID $NATSCHED_AGENT`` to a witness file, so each test also
checks what really ran, not only what the page says.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from natsched import tls
from natsched.embedded import free_port
from tests.helpers import job, toml_jobs
from tests.web.conftest import Stack, open_page, screenshot

WAIT = 20_000  # ms: every wait on the page is bounded


def witness_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def jobs(stack: Stack) -> Stack:
    root = stack.root
    sleep_w = root / "sleep.w"
    stack.apply(
        toml_jobs(
            job(
                "count",
                command=[
                    "sh",
                    "-c",
                    f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {root / "count.w"}; '
                    "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.4; done",
                ],  # fmt: skip
                mode="slave",
                targets={"agents": ["a1"]},
            ),
            job(
                "sleeper",
                command=[
                    "sh",
                    "-c",
                    f"echo start >> {sleep_w}; sleep 30; echo end >> {sleep_w}",
                ],
                mode="slave",
                targets={"agents": ["a1"]},
            ),
            job(
                "extract",
                command=["sh", "-c", "echo extract; sleep 0.3"],
                mode="slave",
                targets={"agents": ["a1"]},
            ),
            job(
                "load-a",
                command=["echo", "load a"],
                mode="slave",
                targets={"agents": ["a2"]},
                triggers=[{"after": ["web.extract"]}],
            ),
            job(
                "load-b",
                command=["sh", "-c", "echo load b; exit 3"],
                mode="slave",
                targets={"agents": ["a1"]},
                triggers=[{"after": ["web.extract"]}],
            ),
            job(
                "report",
                command=["sh", "-c", f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {root / "report.w"}'],
                mode="slave",
                targets={"agents": ["a2"]},
                triggers=[{"after": ["web.load-a", "web.load-b"], "wait": "all", "on": "completed"}],
            ),
            group="web",
        )
    )
    return stack


def test_overview_lists_agents_and_the_leader(jobs: Stack, page: Page) -> None:
    open_page(page, jobs.web_url)
    for agent in ("a1", "a2"):
        expect(page.locator(f"tr[data-agent='{agent}']")).to_be_visible(timeout=WAIT)
    expect(page.get_by_text(re.compile(r"1 master\(s\), leader \S+"))).to_be_visible()
    expect(page.locator("#live.on")).to_be_visible(timeout=WAIT)  # the live stream is open
    screenshot(page, "overview")
    open_page(page, jobs.web_url + "jobs?group=web")
    expect(page.locator("#jobs tbody tr")).to_have_count(6)
    screenshot(page, "jobs")


def test_run_now_shows_the_output_live_and_after_the_end(jobs: Stack, page: Page) -> None:
    open_page(page, jobs.web_url + "jobs/web.count")
    page.get_by_role("button", name="Run now").click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f]+-[0-9a-f]+$"), timeout=WAIT)
    run_id = page.url.rsplit("/", 1)[1]
    output = page.locator("#output")
    # Live: the first lines are on the page while the run still goes on.
    expect(output).to_contain_text("line 1", timeout=WAIT)
    expect(page.locator("#output-state")).to_have_text("(live)")
    expect(output).not_to_contain_text("line 6")
    expect(page.locator("#output-state")).to_have_text("(ended)", timeout=WAIT)
    expect(output).to_contain_text("line 6")
    expect(page.locator("#history tr[data-state='succeeded']")).to_be_visible(
        timeout=WAIT
    )  # page updated live
    screenshot(page, "run")
    assert witness_lines(jobs.root / "count.w") == [f"{run_id} a1"]
    # After the end, the stored output is shown from the stream.
    open_page(page, jobs.web_url + f"runs/{run_id}")
    expect(page.locator("#output-state")).to_have_text("(ended)", timeout=WAIT)
    expect(page.locator("#output")).to_have_text(re.compile(r"line 1\s+line 2.*line 6", re.S))


def test_chain_graph_has_one_node_per_run_with_its_state(jobs: Stack, page: Page) -> None:
    out = jobs.cli("run", "web.extract")
    chain_id = out.split()[0]
    report = jobs.root / "report.w"
    deadline = time.monotonic() + 20
    while not witness_lines(report) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(witness_lines(report)) == 1, "the fan-in ran once"
    open_page(page, jobs.web_url + f"chains/{chain_id}")
    rows = page.locator("#chain-runs tr.chain-node")
    expect(rows).to_have_count(4, timeout=WAIT)
    expect(page.locator("#chain-runs tr[data-state='succeeded']")).to_have_count(3, timeout=WAIT)
    states = {
        rows.nth(i).locator("td").nth(1).inner_text(): rows.nth(i).get_attribute("data-state")
        for i in range(4)
    }
    assert states == {
        "web.extract": "succeeded",
        "web.load-a": "succeeded",
        "web.load-b": "failed",
        "web.report": "succeeded",
    }
    graph = page.evaluate("window.natschedChain")
    assert graph == {"nodes": 4, "runs": 4}
    expect(page.locator("#graph canvas")).to_be_visible()
    screenshot(page, "chain")
    open_page(page, jobs.web_url + "timeline?hours=0.05")
    expect(page.locator("#timeline[data-items]")).to_have_attribute(
        "data-items", re.compile(r"^[1-9]\d*$"), timeout=WAIT
    )
    expect(page.locator("#timeline .vis-group")).not_to_have_count(0)
    screenshot(page, "timeline")


def test_cancel_from_the_run_page_kills_the_run(jobs: Stack, page: Page) -> None:
    open_page(page, jobs.web_url + "jobs/web.sleeper")
    page.get_by_role("button", name="Run now").click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f]+-[0-9a-f]+$"), timeout=WAIT)
    expect(page.locator("#history tr[data-state='started']")).to_be_visible(timeout=WAIT)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#message")).to_contain_text("cancel sent", timeout=WAIT)
    expect(page.locator("#history tr[data-state='killed']")).to_be_visible(timeout=WAIT)
    assert witness_lines(jobs.root / "sleep.w") == ["start"], "the process was killed before its end"
    open_page(page, jobs.web_url + "runs")
    expect(page.locator("#runs tbody tr[data-state='killed']")).to_have_count(1)
    screenshot(page, "runs")


def test_an_anonymous_user_off_localhost_is_refused(jobs: Stack, browser: Browser, tmp_path: Path) -> None:
    certs = tls.generate(tmp_path / "tls", ["127.0.0.1"])
    (tmp_path / "token").write_text("a-long-enough-web-token\n")
    port = free_port("0.0.0.0")
    web = jobs.start(
        "web-off-localhost", "natsched", "web", "--listen", f"0.0.0.0:{port}",
        "--token-file", str(tmp_path / "token"),
        "--https-cert", str(certs["server"]), "--https-key", str(certs["server-key"]),
    )  # fmt: skip
    url = f"https://127.0.0.1:{port}/"
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(certs["ca"]))
    handler = urllib.request.HTTPSHandler(context=context)
    deadline = time.monotonic() + 20
    while True:  # up when the login page answers
        try:
            urllib.request.build_opener(handler).open(url + "login", timeout=1).close()
            break
        except OSError:
            assert web.popen.poll() is None, web.output()
            assert time.monotonic() < deadline, "natsched web did not come up"
            time.sleep(0.1)
    ctx = browser.new_context(ignore_https_errors=True)
    try:
        page = ctx.new_page()
        page.goto(url)
        page.wait_for_url(url + "login", timeout=WAIT)  # anonymous: sent to the login page
        refused = page.request.get(url + "api/overview")
        assert refused.status == 401
        assert page.request.post(url + "api/actions/run", data={"job": "web.count"}).status == 401
        page.fill("input[name=password]", "wrong-token-of-some-length")
        page.click("button[type=submit]")
        page.wait_for_url(url + "login?failed=1", timeout=WAIT)
        page.fill("input[name=password]", "a-long-enough-web-token")
        page.click("button[type=submit]")
        page.wait_for_selector("body[data-ready='1']", timeout=WAIT)
        expect(page.locator("tr[data-agent='a1']")).to_be_visible(timeout=WAIT)
        cookie = next(c for c in ctx.cookies() if c["name"] == "natsched_session")
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    finally:
        ctx.close()
        web.terminate()
