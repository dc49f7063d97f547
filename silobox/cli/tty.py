"""The local terminal during ``run -it`` / ``exec -it``: raw mode, size, and restoring it.

In raw mode every key (Ctrl-C, Ctrl-D, Ctrl-P Ctrl-Q) reaches the container's pty as a byte, so
the container's line discipline, not ours, decides what it means. The terminal must be restored
whatever happens, including errors and SIGTERM, or the user's shell is left unusable.
"""

from __future__ import annotations

import os
from types import TracebackType

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs start-up time
    from typing import Any


def is_tty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def get_size(fd: int) -> tuple[int, int] | None:
    """(height, width) of the terminal on ``fd``, or None when it is not a terminal."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    if size.lines <= 0 or size.columns <= 0:
        return None
    return size.lines, size.columns


class RawMode:
    """Context manager putting a terminal in raw mode (cfmakeraw) and restoring it on exit."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list[Any] | None = None

    def __enter__(self) -> "RawMode":
        import termios

        try:
            self.saved = termios.tcgetattr(self.fd)
        except termios.error:
            self.saved = None
            return self
        mode = termios.tcgetattr(self.fd)
        iflag, oflag, cflag, lflag = 0, 1, 2, 3
        mode[iflag] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                         | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
        mode[oflag] &= ~termios.OPOST
        mode[lflag] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG
                         | termios.IEXTEN)
        mode[cflag] &= ~(termios.CSIZE | termios.PARENB)
        mode[cflag] |= termios.CS8
        mode[6][termios.VMIN] = 1
        mode[6][termios.VTIME] = 0
        termios.tcsetattr(self.fd, termios.TCSAFLUSH, mode)
        return self

    def restore(self) -> None:
        if self.saved is None:
            return
        import termios

        try:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
        except termios.error:
            pass
        self.saved = None

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()


class SignalPipe:
    """Signals delivered through a pipe, so the stream loop's ``select`` wakes for them.

    A Python signal handler cannot safely do HTTP on a connection the loop may be using; instead
    the wakeup fd carries the signal number and the loop acts on it (resize, forward, stop).
    """

    def __init__(self, signals: list[int]) -> None:
        import signal

        self._signal = signal
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        self._old: dict[int, object] = {}
        for s in signals:
            self._old[s] = signal.signal(s, self._noop)

    @staticmethod
    def _noop(signum: int, frame: object) -> None:
        pass

    def read(self) -> list[int]:
        try:
            data = os.read(self.r, 256)
        except BlockingIOError:
            return []
        return list(data)

    def close(self) -> None:
        signal = self._signal
        for s, old in self._old.items():
            if old is not None:  # None: a handler installed outside Python; leave ours
                signal.signal(s, old)
        signal.set_wakeup_fd(self._old_wakeup)
        os.close(self.r)
        os.close(self.w)

    def __enter__(self) -> "SignalPipe":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
