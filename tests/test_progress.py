"""The progress line of long commands: drawn only on a terminal, at most a few times a
second, padded over its last text and erased at the end, so that output piped to a file
holds only the result."""

from __future__ import annotations

import datetime as dt
import io

from typer.testing import CliRunner

from shrivenq.cli import app
from shrivenq.progress import REDRAW_S, ProgressLine, ReplayProgress, VerifyProgress
from shrivenq.timeutil import IST, to_ns


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_is_drawn_when_stderr_is_not_a_terminal():
    stream = io.StringIO()
    with ProgressLine(stream) as line:
        line.show("replay: 10%")
        VerifyProgress(line)(1, 3, 10)
    assert stream.getvalue() == ""


def test_the_line_is_redrawn_a_few_times_a_second_padded_and_erased():
    stream, clock = Terminal(), Clock()
    with ProgressLine(stream, clock=clock) as line:
        line.show("verify: 1/3 segments, 10 records")
        clock.now += REDRAW_S / 2
        line.show("verify: 2/3 segments, 20 records")      # too soon: not drawn
        clock.now += REDRAW_S
        line.show("verify: 3/3 segments, 30k")
    drawn = stream.getvalue().split("\r")
    assert drawn[1] == "verify: 1/3 segments, 10 records"
    # The shorter text covers the longer one before it, and the end erases the line.
    assert drawn[2] == "verify: 3/3 segments, 30k".ljust(len(drawn[1]))
    assert drawn[3].strip() == "" and drawn[-1] == ""
    assert "2/3" not in stream.getvalue()


def test_replay_progress_shows_time_of_day_ticks_rate_and_share_of_the_range():
    stream, clock = Terminal(), Clock()
    start = to_ns(dt.datetime(2026, 11, 20, 9, 15, tzinfo=IST))
    end = to_ns(dt.datetime(2026, 11, 20, 15, 30, tzinfo=IST))
    with ProgressLine(stream, clock=clock) as line:
        progress = ReplayProgress(line)
        clock.now += 2.0
        progress(3_000_000, start + (end - start) // 4, start, end)
        text = stream.getvalue().split("\r")[1]
    assert text == "replay: 10:48:45 IST, 3.0M ticks, 1.5M ticks/s, 25%"


def test_replay_without_an_end_shows_no_share():
    stream, clock = Terminal(), Clock()
    start = to_ns(dt.datetime(2026, 11, 20, 9, 15, tzinfo=IST))
    with ProgressLine(stream, clock=clock) as line:
        progress = ReplayProgress(line)
        clock.now += 1.0
        progress(5_000, start, None, None)
        text = stream.getvalue().split("\r")[1]
    assert text == "replay: 09:15:00 IST, 5000 ticks, 5000 ticks/s"


def test_binance_replay_progress_counts_messages_in_utc():
    stream, clock = Terminal(), Clock()
    start = to_ns(dt.datetime(2026, 11, 20, 9, 15, tzinfo=IST))      # 03:45 UTC
    with ProgressLine(stream, clock=clock) as line:
        progress = ReplayProgress(line, binance=True)
        clock.now += 2.0
        progress(40_000, start, start, None)
        text = stream.getvalue().split("\r")[1]
    assert text == "replay: 03:45:00 UTC, 40k messages, 20k messages/s"


def test_cli_output_to_a_pipe_holds_no_progress(tmp_path):
    result = CliRunner().invoke(app, ["wal", "verify", str(tmp_path)])
    assert "\r" not in result.output
