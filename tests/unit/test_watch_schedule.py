"""When `stagebox watch` scans, and which files it holds back."""

from __future__ import annotations

from datetime import datetime
from datetime import time as clock_time
from pathlib import Path

import pytest

from stagebox.client.scan import LocalFile
from stagebox.client.schedule import RETRY_CAP, Schedule, parse_at, parse_interval
from stagebox.client.stability import StabilityTracker
from stagebox.client.watch_state import ScanSummary, human_size
from stagebox.errors import InvalidInput


def local(*args: int) -> float:
    """A local wall-clock time, so the tests hold in any time zone."""
    return datetime(*args).timestamp()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("1d", 86400), ("1.5m", 90)],
)
def test_an_interval_is_a_duration_with_units(text: str, seconds: float) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["5", "", "m", "5 minutes", "-1m", "0s", "1x", "5m5"])
def test_an_interval_without_a_unit_or_below_a_second_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="--interval"):
        parse_interval(text)


def test_daily_times_are_hours_and_minutes() -> None:
    assert parse_at("02:00") == clock_time(2, 0)
    assert parse_at("7:05") == clock_time(7, 5)
    for bad in ("24:00", "12:60", "2pm", "1200", ""):
        with pytest.raises(InvalidInput, match="--at"):
            parse_at(bad)


def test_an_interval_counts_from_the_start_of_the_last_scan() -> None:
    start = local(2026, 12, 1, 10, 0, 0)
    assert Schedule(300).next_after(start) == start + 300


def test_daily_times_give_the_next_one_today_or_tomorrow() -> None:
    schedule = Schedule(times=(clock_time(2, 0), clock_time(14, 0)))
    assert schedule.next_after(local(2026, 12, 1, 10, 0)) == local(2026, 12, 1, 14, 0)
    assert schedule.next_after(local(2026, 12, 1, 14, 0)) == local(2026, 12, 2, 2, 0)
    assert schedule.next_after(local(2026, 12, 31, 23, 59)) == local(2027, 1, 1, 2, 0)


def test_with_both_the_earlier_wins() -> None:
    schedule = Schedule(3600, (clock_time(10, 30),))
    assert schedule.next_after(local(2026, 12, 1, 10, 0)) == local(2026, 12, 1, 10, 30)
    assert schedule.next_after(local(2026, 12, 1, 10, 45)) == local(2026, 12, 1, 11, 45)


def test_a_scan_that_ran_past_its_successor_is_followed_at_once() -> None:
    # given a scan that started at 10:00 and took 20 minutes, every 5 minutes
    due = Schedule(300).next_after(local(2026, 12, 1, 10, 0))
    # then the next one is already due when it ends
    assert due < local(2026, 12, 1, 10, 20)


def test_a_schedule_needs_an_interval_or_a_time() -> None:
    with pytest.raises(InvalidInput):
        Schedule()


def test_retries_back_off_from_the_interval_up_to_five_minutes() -> None:
    def even(failures: int, schedule: Schedule) -> float:
        return schedule.retry_delay(failures, jitter=lambda: 0.5)

    short = Schedule(1)
    assert [even(k, short) for k in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert even(20, short) == RETRY_CAP
    # a long interval or a daily time does not wait that long to try again
    assert even(1, Schedule(3600)) == 30
    assert even(1, Schedule(times=(clock_time(2, 0),))) == 30
    assert even(10, Schedule(3600)) == RETRY_CAP
    # jitter spreads the machines of a facility by at most 10%
    assert 0.9 <= Schedule(1).retry_delay(1, jitter=lambda: 0.0) <= 1.1
    assert 0.9 <= Schedule(1).retry_delay(1, jitter=lambda: 1.0) <= 1.1


def file(name: str, size: int, mtime_ns: int = 1) -> LocalFile:
    return LocalFile(Path("/src/ds") / name, "ds", "", name, size, mtime_ns)


def scan(tracker: StabilityTracker, *files: LocalFile, stored: tuple[str, ...] = ()) -> list[str]:
    """One complete scan; the names of the files ready to send."""
    tracker.begin()
    ready = [f.filename for f in files if tracker.ready(f, f.filename in stored)]
    tracker.end()
    return ready


def test_on_the_first_scan_every_file_found_is_ready() -> None:
    tracker = StabilityTracker()
    assert scan(tracker, file("a", 1), file("b", 2)) == ["a", "b"]


def test_a_file_new_since_the_last_scan_waits_one_scan() -> None:
    tracker = StabilityTracker()
    scan(tracker, file("a", 1))
    assert scan(tracker, file("a", 1), file("new", 5)) == ["a"]
    assert scan(tracker, file("a", 1), file("new", 5)) == ["a", "new"]


def test_a_growing_file_waits_until_two_scans_see_the_same_size_and_mtime() -> None:
    tracker = StabilityTracker()
    scan(tracker)
    assert scan(tracker, file("grow", 10, 1)) == []
    assert scan(tracker, file("grow", 20, 2)) == []
    assert scan(tracker, file("grow", 20, 3)) == []  # touched: the mtime moved
    assert scan(tracker, file("grow", 20, 3)) == ["grow"]


def test_a_file_stored_as_it_is_is_never_held_back_nor_remembered() -> None:
    tracker = StabilityTracker()
    scan(tracker)
    assert scan(tracker, file("a", 1), stored=("a",)) == ["a"]
    assert tracker.remembered == 0


def test_a_deleted_file_is_forgotten_and_waits_again_if_it_comes_back() -> None:
    tracker = StabilityTracker()
    scan(tracker)
    scan(tracker, file("a", 1))
    scan(tracker)
    assert tracker.remembered == 0
    assert scan(tracker, file("a", 1)) == []


def test_a_scan_cut_short_forgets_nothing_it_did_not_reach() -> None:
    tracker = StabilityTracker()
    scan(tracker)
    scan(tracker, file("a", 1), file("b", 1))
    # when a scan stops after "a" (the server went away, a stop request)
    tracker.begin()
    assert tracker.ready(file("a", 1))
    tracker.end(complete=False)
    # then "b", unreached, is still known: ready at the next scan
    assert scan(tracker, file("a", 1), file("b", 1)) == ["a", "b"]


def test_a_scan_line_says_what_it_found_and_did() -> None:
    summary = ScanSummary(12, 0.0, new=3, changed=1, waiting=2, stored=140, seconds=1.2)
    assert summary.line() == (
        "scan 12: 3 new, 1 changed, 2 waiting (growing), 140 stored, 0 failed (1.2 s)"
    )
    summary.omitted = {"newer than --min-age": 4}
    assert summary.line().endswith("0 failed; omitted: 4 newer than --min-age (1.2 s)")


def test_sizes_are_said_in_binary_units() -> None:
    assert human_size(5) == "5 B"
    assert human_size(12 << 20) == "12.0 MiB"
    assert human_size(3 << 40) == "3.0 TiB"
