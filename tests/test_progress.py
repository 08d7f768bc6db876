"""benchmark.progress: a tqdm bar on a terminal, a few plain lines (no carriage returns) in a log."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from benchmark.progress import progress


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class FakeClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_log_gets_a_line_per_tenth_and_a_final_line() -> None:
    stream = FakeStream(tty=False)
    seen = list(progress(range(1000), desc="checking cityscapes", unit="pair", stream=stream, clock=FakeClock(0.05)))
    assert seen == list(range(1000))
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 10, lines  # 10%, ..., 90%, then the final line
    assert all(line.startswith("checking cityscapes: ") for line in lines)
    assert lines[0].startswith("checking cityscapes: 100/1000 pair (10%)")
    assert lines[8].startswith("checking cityscapes: 900/1000 pair (90%)")
    assert lines[-1].startswith("checking cityscapes: 1000/1000 pair done in ")


def test_work_done_within_two_seconds_gets_only_the_final_line() -> None:
    stream = FakeStream(tty=False)
    list(progress(range(1000), desc="checking cityscapes", unit="pair", stream=stream, clock=FakeClock(0.001)))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("checking cityscapes: 1000/1000 pair done in 1.0 s")


def test_log_gets_a_line_every_30_s_when_slow_or_without_a_total() -> None:
    stream = FakeStream(tty=False)
    items = (i for i in range(10))  # no len(): lines by time only
    assert sum(1 for _ in progress(items, desc="upload", unit="file", stream=stream, clock=FakeClock(10.0))) == 10
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines[:-1]] == ["upload: 3 file", "upload: 6 file", "upload: 9 file"]
    assert lines[-1].startswith("upload: 10 file done in ")
    # with a total, a slow loop still reports every 30 s between its 10% steps
    stream = FakeStream(tty=False)
    list(progress(range(5), desc="slow", total=5, stream=stream, clock=FakeClock(40.0)))
    assert len(stream.getvalue().splitlines()) == 5  # 4 intermediate lines + the final one


def test_a_loop_left_early_says_it_stopped() -> None:
    stream = FakeStream(tty=False)
    for i in progress(range(100), desc="work", stream=stream):
        if i == 4:
            break
    assert stream.getvalue().splitlines()[-1].startswith("work: 4/100 it stopped in ")


def test_terminal_gets_a_tqdm_bar() -> None:
    stream = FakeStream(tty=True)
    assert list(progress(range(50), desc="bar", unit="pair", stream=stream)) == list(range(50))
    text = stream.getvalue()
    assert "\r" in text and "50/50" in text and "bar" in text


def test_disabled_is_silent() -> None:
    stream = FakeStream(tty=False)
    assert list(progress([1, 2, 3], desc="quiet", stream=stream, disable=True)) == [1, 2, 3]
    assert stream.getvalue() == ""


def test_data_check_prints_plain_lines_when_stderr_is_not_a_terminal(synthetic_tree, tmp_path: Path, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmark.data.check as check

    root = tmp_path / "cityscapes"
    shutil.copytree(synthetic_tree("cityscapes"), root)
    monkeypatch.setattr(check, "PROGRESS_MIN_FILES", 0)
    assert check.check_dataset("cityscapes", root).usable
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert 1 <= len(lines) <= 11 and all(line.startswith("checking cityscapes: ") for line in lines), lines
    assert lines[-1].startswith("checking cityscapes: 10/10 pair done in ")


def test_tally_lines_say_count_elapsed_and_time_left() -> None:
    """A log line per finished unit; the rate counts only units run here, not the ones reused."""
    from benchmark.progress import Tally

    stream = FakeStream(tty=False)
    tally = Tally(10, done=4, stream=stream, clock=FakeClock(30.0))  # 30 s between clock reads
    tally.line("+ cell a")
    tally.line("+ cell b")
    tally.undo()  # a finished input was damaged: it runs again
    tally.line("+ model c")
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    # 1 unit run in 30 s, 5 left -> 2m30s; then 2 in 60 s, 4 left -> 2m00s
    assert lines[0] == "[ 5/10 30s, ~2m30s left] + cell a", lines
    assert lines[1] == "[ 6/10 1m00s, ~2m00s left] + cell b", lines
    assert lines[2].startswith("[ 6/10 1m30s, ~") and lines[2].endswith("] + model c")
    assert Tally(3, stream=FakeStream(tty=False), clock=FakeClock(1.0)).prefix() == "[0/3 1s, ~? left]"


def test_tally_on_a_terminal_draws_a_bar_with_rate_and_eta() -> None:
    from benchmark.progress import Tally

    stream = FakeStream(tty=True)
    tally = Tally(4, stream=stream)
    for name in "abcd":
        tally.line(f"+ cell {name}")
    tally.close()
    text = stream.getvalue()
    assert "\r" in text and "4/4" in text and ("unit/s" in text or "s/unit" in text) and "<00:00" in text  # rate, ETA
    assert all(f"+ cell {name}" in text for name in "abcd")
