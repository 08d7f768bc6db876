"""Progress that reads well both in a terminal and in a log file.

On a terminal, `progress()` is a tqdm bar. Anywhere else (a pipe, a file, a CI log, a Ray job's output) a
bar's carriage-return redraws pile up into hundreds of frames, so it prints plain lines instead: one each
time another 10% is done or 30 s have passed, whichever comes first, and one final line. Work that ends
within its first 2 s gets only the final line (ten lines for a 0.3 s check are noise).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")

LINE_STEPS = 10  # a line each time another 1/LINE_STEPS of the total is done
LINE_EVERY_S = 30.0
QUIET_FIRST_S = 2.0  # no 10% lines before this


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it", stream: IO[str] | None = None,
             disable: bool = False, clock: Callable[[], float] = time.monotonic) -> Iterator[T]:
    """Yield from `iterable`, showing progress on `stream` (default: sys.stderr at call time).

    `total` defaults to len(iterable) when it has one; without a total, plain lines come every 30 s only.
    `disable` yields silently (for work too small to be worth a line). `clock` is for tests.
    """
    stream = sys.stderr if stream is None else stream
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if disable:
        return iter(iterable)
    if _isatty(stream):
        from tqdm import tqdm

        return iter(tqdm(iterable, desc=desc, total=total, unit=unit, file=stream))
    return _lines(iterable, desc, total, unit, stream, clock)


def _rate(done: int, elapsed: float, unit: str) -> str:
    if done == 0 or elapsed <= 0:
        return f"- {unit}/s"
    per_s = done / elapsed
    return f"{per_s:.1f} {unit}/s" if per_s >= 1 else f"{elapsed / done:.1f} s/{unit}"


def _lines(iterable: Iterable[T], desc: str, total: int | None, unit: str, stream: IO[str],
           clock: Callable[[], float]) -> Iterator[T]:
    start = last_time = clock()
    done = 0
    next_step = 1  # the next multiple of total/LINE_STEPS that earns a line
    completed = False

    def emit(text: str) -> None:
        print(f"{desc}: {text}", file=stream, flush=True)

    try:
        for item in iterable:
            yield item
            done += 1
            if total is not None and done >= total:
                continue  # the final line says it
            now = clock()
            step_due = bool(total) and done * LINE_STEPS >= next_step * total and now - start >= QUIET_FIRST_S
            if step_due or now - last_time >= LINE_EVERY_S:
                elapsed = now - start
                if total:
                    left = (total - done) * elapsed / done
                    emit(f"{done}/{total} {unit} ({100 * done / total:.0f}%), {elapsed:.0f} s, "
                         f"{_rate(done, elapsed, unit)}, ~{left:.0f} s left")
                    next_step = done * LINE_STEPS // total + 1
                else:
                    emit(f"{done} {unit}, {elapsed:.0f} s, {_rate(done, elapsed, unit)}")
                last_time = now
        completed = True
    finally:
        elapsed = clock() - start
        count = f"{done}/{total}" if total is not None else f"{done}"
        emit(f"{count} {unit} {'done' if completed else 'stopped'} in {elapsed:.1f} s ({_rate(done, elapsed, unit)})")


def _duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m: short enough for a line prefix."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Tally:
    """A run of `total` work items that prints one line per finished item (a grid's units): in a log each
    line starts with the count, the elapsed time and the time left at the rate so far; on a terminal the
    lines scroll above a tqdm bar with rate and ETA. Items finished before the run (`done`, reused results)
    count towards the total but not towards the rate."""

    def __init__(self, total: int, done: int = 0, unit: str = "unit", stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.done, self._first, self._clock = total, done, done, clock
        self._stream = sys.stderr if stream is None else stream
        self._start = clock()
        self._bar = None
        if _isatty(self._stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, unit=unit, file=self._stream, dynamic_ncols=True)

    def prefix(self) -> str:
        """`[  12/599 1m05s, ~9m40s left]`: where the run stands."""
        elapsed = self._clock() - self._start
        ran = self.done - self._first
        left = "?" if ran <= 0 else _duration((self.total - self.done) * elapsed / ran)
        return f"[{self.done:>{len(str(self.total))}}/{self.total} {_duration(elapsed)}, ~{left} left]"

    def line(self, text: str, advance: bool = True) -> None:
        """Print `text` after the prefix; `advance`: one more item is finished first."""
        if advance:
            self.done += 1
            if self._bar is not None:
                self._bar.update(1)
        message = f"{self.prefix()} {text}"
        if self._bar is not None:
            self._bar.write(message, file=self._stream)
        else:
            print(message, file=self._stream, flush=True)

    def undo(self) -> None:
        """An item counted as finished must run again (its files were found damaged)."""
        self.done -= 1
        if self._bar is not None:
            self._bar.update(-1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
