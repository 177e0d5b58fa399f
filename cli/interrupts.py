"""Ctrl-C, SIGTERM and the other terminating signals as stop requests, honoured where stopping is safe.

SIGHUP (a closed terminal, ``timeout -s HUP``), SIGQUIT (Ctrl-\\), SIGUSR1/2,
SIGALRM and SIGXCPU would end the process by default without removing its
temporary files; here they end the run as SIGTERM does, exit status 128 + the
signal number.  SIGKILL cannot be caught: see ``lucid clean``.

Raising from a signal handler at an arbitrary bytecode is not safe here: inside
h5py's file-object callbacks the exception is swallowed or turned into an I/O
error (the run then finishes with exit 0, or fails with exit 1), and between
taking and releasing a lock it can leave h5py's global lock held, so the
interpreter hangs at exit.  So the first signal only records the request; it
is raised at the next check (the progress callback between slabs, in the main
thread, where ``pool3d_file``'s cleanup aborts the outputs) and after the
command.  A second signal raises at once, for a run stuck somewhere else.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

_NAMES = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGXCPU")
SIGNALS = tuple(getattr(signal, name) for name in _NAMES if hasattr(signal, name))  # Windows has fewer


class Terminated(BaseException):
    """A terminating signal other than SIGINT; a BaseException like KeyboardInterrupt,
    so no ``except Exception`` swallows it."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)

    @property
    def message(self) -> str:
        name = signal.Signals(self.signum).name
        return "terminated" if name == "SIGTERM" else f"terminated by {name}"


def _exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


class StopRequests:
    """Records the SIGNALS while installed; ``check()`` raises KeyboardInterrupt or Terminated."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handler(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise _exception(signum)
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise _exception(self.signum)

    def guard(self, callback: Callable[[int, int, int], None] | None) -> Callable[[int, int, int], None]:
        """A progress callback that runs ``callback`` and then honours a pending request."""

        def progress(done: int, total: int, bytes_read: int) -> None:
            if callback is not None:
                callback(done, total, bytes_read)
            self.check()

        return progress

    @contextmanager
    def installed(self) -> Iterator["StopRequests"]:
        """Install the handlers (main thread only; elsewhere signals cannot be caught) and restore them."""
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handler) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


STOP = StopRequests()
