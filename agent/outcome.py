"""A run's final event, from how its process ended: state, exit code or signal, reason and the
output tail, with the run's secrets masked.
"""

from __future__ import annotations

from agent.runner import ProcessResult
from natsched.events import RunEvent, RunState, tail_text
from natsched.secrets import Masker


def final_event(started: RunEvent, result: ProcessResult, masker: Masker | None = None) -> RunEvent:
    if result.error:
        state, reason = RunState.FAILED, result.error
    elif result.timed_out:
        state, reason = RunState.TIMED_OUT, f"timed out after {result.duration:.1f}s; process tree killed"
    elif result.killed:
        state, reason = RunState.KILLED, "killed (cancelled or agent shutdown)"
    elif result.exit_code == 0:
        state, reason = RunState.SUCCEEDED, ""
    else:
        state = RunState.FAILED
        reason = (
            f"exit code {result.exit_code}" if result.signal is None else f"killed by signal {result.signal}"
        )
    return started.moved_to(
        state,
        ended_at=result.ended_at,
        exit_code=result.exit_code,
        signal=result.signal,
        reason=masker.text(reason) if masker else reason,
        output_tail=_masked_tail(result, masker) if masker else tail_text(result.output_tail),
        output_bytes=result.output_bytes,
    )


def _masked_tail(result: ProcessResult, masker: Masker) -> str:
    text = tail_text(result.output_tail)
    # A tail cut from longer output may begin inside a value: its end is masked too.
    return masker.cut_tail(text) if result.output_bytes > len(result.output_tail) else masker.text(text)
