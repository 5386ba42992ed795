"""Progress of long work in the CLI: a bar on a terminal, a line every N items elsewhere.

Commands that can run for minutes (``reconcile-channels``, ``audit``, ``migrate``,
``channels resync``) wrap their loop in :func:`progress`::

    from stockkeeper.observability.progress import progress

    with progress(total=len(skus), label="resync shopify-main") as bar:
        for page in pages:
            push(page)
            bar.advance(len(page))

On a terminal (the stream is a TTY) it draws a rich progress bar with the count, the
rate and the ETA. Anywhere else (a pipe, a file, a CI log) it writes one plain line
every ``every`` items and a last one when the work ends, e.g.
``resync shopify-main: 400/2000 (20%) 51.3/s ETA 31s``. ``total`` may be None when it is
not known (no percentage, no ETA), and may be set later with :meth:`Progress.set_total`.
Progress goes to stderr by default, so a command's own output (JSON, a table) stays
clean on stdout.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

# Lines a non-terminal gets over the whole run when ``every`` is not given (about).
LINES_PER_RUN = 20
DEFAULT_EVERY = 100


def eta_s(done: int, total: int | None, elapsed_s: float) -> float | None:
    """Seconds left at the average rate so far; None while unknown."""
    if total is None or done <= 0 or elapsed_s <= 0:
        return None
    return max(0.0, (total - done) * elapsed_s / done)


def format_duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def default_every(total: int | None) -> int:
    """Items between two lines: about LINES_PER_RUN lines for a known total."""
    if total is None or total <= 0:
        return DEFAULT_EVERY
    return max(1, -(-total // LINES_PER_RUN))


class Progress:
    """What a command reports its progress to; see :func:`progress`."""

    def __init__(self, total: int | None, label: str) -> None:
        self.total = total
        self.label = label
        self.done = 0

    def advance(self, n: int = 1) -> None:
        """``n`` more items are done."""
        self.done += n

    def set_total(self, total: int | None) -> None:
        """The total, once it is known (or corrected)."""
        self.total = total


class LineProgress(Progress):
    """One line every ``every`` items, and one at the end: for logs and pipes."""

    def __init__(
        self,
        total: int | None,
        label: str,
        stream: TextIO,
        every: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(total, label)
        self.stream = stream
        self.every = max(1, every)
        self.clock = clock
        self.started = clock()
        self._next = self.every
        self._last_written = -1

    def advance(self, n: int = 1) -> None:
        super().advance(n)
        if self.done >= self._next:
            self.write()
            self._next = (self.done // self.every + 1) * self.every

    def line(self) -> str:
        elapsed = self.clock() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.label}: {self.done}"]
        if self.total is not None:
            parts[0] += f"/{self.total}"
            if self.total > 0:
                parts.append(f"({100 * self.done / self.total:.0f}%)")
        parts.append(f"{rate:.1f}/s")
        left = eta_s(self.done, self.total, elapsed)
        if left is not None and self.done < (self.total or 0):
            parts.append(f"ETA {format_duration(left)}")
        elif self.total is not None and self.done >= self.total:
            parts.append(f"done in {format_duration(elapsed)}")
        return " ".join(parts)

    def write(self) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._last_written = self.done

    def finish(self) -> None:
        if self._last_written != self.done:
            self.write()


class _Rate(ProgressColumn):
    """Items per second, as the plain lines say it."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f}/s", style="progress.data.speed")


class BarProgress(Progress):
    """A rich progress bar on a terminal: count, percentage, rate and ETA."""

    def __init__(self, total: int | None, label: str, stream: TextIO) -> None:
        super().__init__(total, label)
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _Rate(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self._task: TaskID = self._bar.add_task(label, total=total)

    def start(self) -> None:
        self._bar.start()

    def advance(self, n: int = 1) -> None:
        super().advance(n)
        self._bar.advance(self._task, n)

    def set_total(self, total: int | None) -> None:
        super().set_total(total)
        self._bar.update(self._task, total=total)

    def finish(self) -> None:
        self._bar.stop()


@contextlib.contextmanager
def progress(
    total: int | None,
    label: str,
    *,
    every: int | None = None,
    stream: TextIO | None = None,
    tty: bool | None = None,
) -> Iterator[Progress]:
    """Report the progress of ``total`` items of work called ``label``.

    ``stream``: where to (default stderr). ``tty``: force the bar (True) or the lines
    (False); default: the bar when ``stream`` is a terminal. ``every``: items between two
    lines when not on a terminal (default: about 20 lines over a known total, else 100).
    The last line (or the bar's final state) is written when the block ends, also when
    it ends with an error, so the log says how far the work got.
    """
    out = stream if stream is not None else sys.stderr
    on_tty = out.isatty() if tty is None else tty
    bar: BarProgress | LineProgress
    if on_tty:
        bar = BarProgress(total, label, out)
        bar.start()
    else:
        bar = LineProgress(total, label, out, every or default_every(total))
    try:
        yield bar
    finally:
        bar.finish()
