"""Stop signals as exceptions, so every long-running command cleans up the same way for Ctrl-C, `kill`,
`systemctl stop`, `docker stop` and a closed terminal.

`Stopped` derives from KeyboardInterrupt: the `except Exception` blocks that keep one failed unit or one
report problem from ending a run do not swallow it, and every `except KeyboardInterrupt` / `finally` clean-up
written for Ctrl-C runs for SIGTERM and SIGHUP too. The CLI turns it into exit code 128 + the signal's number,
as a shell reports a process the signal ended (143 for SIGTERM, 129 for SIGHUP, 130 for SIGINT).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

# SIGINT is left to Python's own KeyboardInterrupt; `segleak ui` asks for it too (STOP_SIGNALS in analysis.server)
TERMINATE = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def raise_stopped(signum: int, _frame: FrameType | None) -> None:
    """A signal handler: raise `Stopped` in the main thread."""
    raise Stopped(signum)


_ARMED: list[int] = []  # the signals of the `stop_on_signals` blocks now open


def rearm() -> None:
    """Inside `stop_on_signals`: install `raise_stopped` again where a library replaced it (`ray.init` sets
    its own SIGTERM handler, which exits without unwinding: no parent run marked, no clean-up). Outside such
    a block (a library caller) nothing changes."""
    if threading.current_thread() is threading.main_thread():
        for sig in set(_ARMED):
            signal.signal(sig, raise_stopped)


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = TERMINATE) -> Iterator[None]:
    """Raise `Stopped` for these signals inside the block; restore the previous handlers after it."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {sig: signal.signal(sig, raise_stopped) for sig in signals}
    _ARMED.extend(signals)
    try:
        yield
    finally:
        for sig in signals:
            _ARMED.remove(sig)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
