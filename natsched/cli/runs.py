"""``natsched runs``, ``natsched runs show RUN`` and ``natsched logs RUN [--follow]``."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

import typer
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from rich.table import Table
from rich.tree import Tree

from natsched import subjects
from natsched.chainview import ChainView, read_chain
from natsched.cli.common import STATE_COLOURS, ServerOption, age, console, run, settings
from natsched.connection import connect
from natsched.errors import CodecError, ConfigError, NatschedError, NotFoundError
from natsched.events import parse_event
from natsched.jobspec import parse_duration
from natsched.kvscan import read_stream
from natsched.runs import get_run, list_runs, run_started_at

FIRST_EVENT_WAIT = 30.0  # logs --follow of a run whose first event is not in the stream yet

app = typer.Typer(help="Runs, newest first, from the events stream.", invoke_without_command=True)


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return time.time() - parse_duration(value, "since")
    except Exception:  # noqa: BLE001 - any parse failure is the same user error
        raise ConfigError(f"--since {value!r}: give a duration like 30m, 6h, 2d") from None


@app.callback()
def runs(
    ctx: typer.Context,
    job: Annotated[str | None, typer.Option("--job", "-j", help="<group>.<job>")] = None,
    agent: Annotated[str | None, typer.Option("--agent", "-a")] = None,
    state: Annotated[str | None, typer.Option("--state", help="latest state, e.g. failed")] = None,
    since: Annotated[str | None, typer.Option(help="only runs of the last 30m / 6h / 2d")] = None,
    limit: Annotated[int, typer.Option(help="at most this many runs")] = 50,
    chain: Annotated[str | None, typer.Option("--chain", help="a chain run's tree (its root run id)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    server: ServerOption = None,
) -> None:
    """List runs (newest first) with their latest state."""
    if ctx.invoked_subcommand is not None:
        return
    if chain is not None:
        show_chain(chain, as_json, server)
        return

    async def core() -> list[Any]:
        nc = await connect(settings(server))
        try:
            return await list_runs(
                nc.jetstream(), job=job, agent=agent, state=state, since=_since(since), limit=limit
            )
        finally:
            await nc.close()

    found = run(core())
    if as_json:
        console.print_json(json.dumps([asdict(r.latest) | {"states": r.states} for r in found]))
        return
    table = Table("run", "job", "agent", "state", "trigger", "started", "took", "exit", "reason", box=None)
    for summary in found:
        e = summary.latest
        colour = STATE_COLOURS.get(e.state.value, "white")
        took = (
            f"{e.duration:.3f}s"
            if e.duration is not None
            else (age(time.time() - e.started_at) + "…" if e.started_at else "-")
        )
        table.add_row(
            e.run_id,
            e.job,
            e.agent,
            f"[{colour}]{e.state.value}[/]",
            e.trigger,
            _when(e.started_at),
            took,
            "-" if e.exit_code is None else str(e.exit_code),
            e.reason[:60],
        )
    console.print(table)
    console.print(f"{len(found)} run(s)", highlight=False)


def show_chain(chain_id: str, as_json: bool, server: str | None) -> None:
    """A chain run as a tree: per step the job, host, times and result; the chain's state."""

    async def core() -> ChainView:
        nc = await connect(settings(server))
        try:
            return await read_chain(nc.jetstream(), chain_id)
        finally:
            await nc.close()

    view = run(core())
    if as_json:
        steps = [
            asdict(r.latest) | {"states": r.states, "parents": view.parents(run_id)}
            for run_id, r in view.runs.items()
        ]
        console.print_json(
            json.dumps({"chain_id": chain_id, "state": view.state, "waiting": view.waiting, "runs": steps})
        )
        return
    colour = STATE_COLOURS.get(view.state, "white")
    tree = Tree(f"chain {chain_id}: [{colour}]{view.state}[/]")

    def add(node: Tree, run_id: str, seen: set[str]) -> None:
        e = view.runs[run_id].latest
        took = f"{e.duration:.3f}s" if e.duration is not None else "…"
        step = node.add(
            f"[bold]{e.job}[/] on {e.agent}: [{STATE_COLOURS.get(e.state.value, 'white')}]{e.state.value}[/]"
            f"  {_when(e.started_at)}  {took}"
            + ("" if e.exit_code is None else f"  exit {e.exit_code}")
            + (f"  {e.reason[:80]}" if e.reason else "")
            + f"  [dim]{run_id}[/]"
        )
        for child in view.children(run_id):
            if child not in seen:
                seen.add(child)
                add(step, child, seen)

    seen: set[str] = set()
    for root in view.roots():
        add(tree, root, seen)
    for job in view.waiting:
        tree.add(f"[yellow]{job}[/]: fan-in waiting")
    console.print(tree)


# What a run's trigger detail means, in the order an operator looks for it; other keys follow.
_DETAIL_LABELS = {
    "file": "file",
    "subject": "subject",
    "correlation_id": "correlation id",
    "chain_id": "chain",
    "parents": "chain parents",
    "upstream": "upstream",
    "retry_of": "retry of",
    "lost_run": "re-dispatch of lost run",
    "batch": "batch",
    "batch_size": "batch size",
    "late_ms": "late (ms)",
}


def detail_lines(detail: dict[str, str]) -> list[str]:
    """``  file: /in/a.csv`` lines for a run's trigger detail (file, subject, correlation, chain)."""
    known = [key for key in _DETAIL_LABELS if key in detail]
    others = sorted(key for key in detail if key not in _DETAIL_LABELS)
    return [f"  {_DETAIL_LABELS.get(key, key)}: {detail[key]}" for key in [*known, *others]]


@app.command()
def show(run_id: Annotated[str, typer.Argument(help="run id")], server: ServerOption = None) -> None:
    """One run: every state it went through, times, exit code, output tail."""

    async def core() -> Any:
        nc = await connect(settings(server))
        try:
            return await get_run(nc.jetstream(), run_id)
        finally:
            await nc.close()

    summary = run(core())
    e = summary.latest
    console.print(f"run {e.run_id}: [bold]{e.job}[/] on {e.agent} — {e.state.value}", highlight=False)
    console.print(f"states: {' → '.join(summary.states)}", highlight=False)
    console.print(
        f"trigger: {e.trigger}  scheduled: {_when(e.scheduled_at)}  started: {_when(e.started_at)}  "
        f"ended: {_when(e.ended_at)}  exit: {e.exit_code}  pid: {e.pid}",
        highlight=False,
    )
    for line in detail_lines(summary.detail):
        console.print(line, highlight=False)
    if e.reason:
        console.print(f"reason: {e.reason}", highlight=False)
    if e.output_tail:
        console.print(
            f"output ({e.output_bytes} bytes, last {len(e.output_tail.encode())}):", highlight=False
        )
        sys.stdout.write(e.output_tail)


async def _watch_end(nc: Client, run_id: str, done: asyncio.Event) -> Subscription:
    """Set ``done`` when the run's final event arrives (or already happened)."""

    async def on_event(msg: Msg) -> None:
        try:
            if (event := parse_event(msg.data, msg.subject)).run_id == run_id and event.state.final:
                done.set()
        except CodecError:
            pass

    sub = await nc.subscribe(subjects.EVENTS_SUBJECTS, cb=on_event)
    try:  # it may have ended before we subscribed
        if (await get_run(nc.jetstream(), run_id)).latest.state.final:
            done.set()
    except NatschedError:
        pass  # not started yet: keep following
    return sub


async def _run_agent(nc: Client, run_id: str, wait: float) -> str:
    """The agent a run belongs to (that of its first event), waiting up to ``wait`` for it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return (await get_run(nc.jetstream(), run_id)).latest.agent
        except NotFoundError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)


async def print_log(nc: Client, run_id: str, follow: bool, agent: str | None = None) -> None:
    """Write a run's output to stdout; with ``follow``, keep going until the run ended.

    Only the chunks of the run's own agent (``natsched.log.<agent>.<run>``) are its output.
    """
    js = nc.jetstream()
    since = run_started_at(run_id) - 2.0
    done = asyncio.Event()
    end_watch = await _watch_end(nc, run_id, done) if follow else None
    try:
        agent = agent or await _run_agent(nc, run_id, FIRST_EVENT_WAIT if follow else 0)
        chunks = subjects.log_subject(agent, run_id)
        printed = 0
        async for msg in read_stream(js, subjects.LOGS_STREAM, chunks, since=since):
            sys.stdout.buffer.write(msg.data)
            printed = msg.metadata.sequence.stream
        sys.stdout.flush()
        if not follow:
            return
        live: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_chunk(msg: Msg) -> None:
            live.put_nowait(msg)

        sub = await js.subscribe(
            chunks,
            stream=subjects.LOGS_STREAM,
            cb=on_chunk,
            ordered_consumer=True,
            config=_from_seq(printed + 1),
        )
        while not (done.is_set() and live.empty()):
            try:
                msg = await asyncio.wait_for(live.get(), 0.2)
            except TimeoutError:
                continue
            sys.stdout.buffer.write(msg.data)
            sys.stdout.flush()
        await sub.unsubscribe()
    finally:
        if end_watch is not None:
            await end_watch.unsubscribe()


def _from_seq(seq: int) -> Any:
    from nats.js import api

    return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seq)


def logs(
    run_id: Annotated[str, typer.Argument(help="run id")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the run ends")] = False,
    server: ServerOption = None,
) -> None:
    """Print a run's output from the log stream (live with --follow)."""

    async def core() -> None:
        nc = await connect(settings(server))
        try:
            await print_log(nc, run_id, follow)
        finally:
            await nc.close()

    run(core())
