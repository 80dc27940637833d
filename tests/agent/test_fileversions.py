"""Which file versions a file-triggered job ran for, across restarts (agent/fileversions.py)."""

from __future__ import annotations

from pathlib import Path

from agent.fileversions import FileVersions, matching_files, scope
from natsched.triggers.file import FileTrigger


def _unrun(versions: FileVersions, trigger: FileTrigger) -> list[str]:
    versions.keep_only([("g.job", scope(trigger))])
    return versions.unrun("g.job", trigger, matching_files(trigger))


def test_a_baseline_then_what_arrived_unwatched_and_widened_patterns_take_a_new_baseline(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "old.csv").write_text("1")
    (inbox / "old.txt").write_text("1")
    csv = FileTrigger(watch=str(inbox), patterns=("*.csv",))
    versions = FileVersions(tmp_path / "files.sqlite")
    versions.open()
    assert _unrun(versions, csv) == []  # first watch: what is there is the baseline
    (inbox / "new.csv").write_text("2")  # arrived while nobody watched
    assert _unrun(versions, csv) == [str(inbox / "new.csv")]
    versions.note("g.job", str(inbox / "new.csv"), matching_files(csv)[str(inbox / "new.csv")])
    versions.close()

    versions = FileVersions(tmp_path / "files.sqlite")  # the agent restarted
    versions.open()
    assert _unrun(versions, csv) == []  # ran: not again
    wider = FileTrigger(watch=str(inbox), patterns=("*",))
    assert _unrun(versions, wider) == [], "files the old patterns did not match are a new baseline"
    (inbox / "b.txt").write_text("3")
    assert _unrun(versions, wider) == [str(inbox / "b.txt")]
    versions.close()
