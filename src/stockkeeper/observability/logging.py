"""Structured logs, one event per line: JSON, or a readable console format on a terminal."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO, cast

import structlog

from stockkeeper.observability.tracing import add_trace_id

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


ACCESS_LOGGER = "stockkeeper.access"
"""The HTTP access log's logger: its standard-library level is the on/off switch."""


class _FirstServerStartOnly(logging.Filter):
    """uvicorn says "Started server process [pid]" once per server, and a process runs
    two or three: let the first through."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Started server process"):
            return True
        first, self.seen = not self.seen, True
        return first


# What aio-pika and aiormq say on every reconnect attempt while RabbitMQ is away (each
# second by default, per connection): logger, and how the message starts (D-436).
RECONNECT_CHATTER: dict[str, tuple[str, ...]] = {
    "aiormq.connection": ("error when creating transport",),
    "aio_pika.robust_connection": ("Connection to ", "Connection attempt to "),
}
CHATTER_EVERY_S = 60.0

# Whether a RabbitMQ connection of this process has once been up (``broker_up``).
_broker_was_up = False


def broker_up() -> None:
    """A broker connection is up: from now on aio-pika's reconnect lines are throttled
    (D-436) rather than left out (D-482)."""
    global _broker_was_up
    _broker_was_up = True


class _QuietUntilBrokerUp(logging.Filter):
    """Before any connection of the process has been up, a failed connect is ours to
    report, in one line naming ``broker.url`` (D-435); aio-pika's and aiormq's lines
    about it ("error when creating transport", "... Reconnecting after 1 seconds",
    which the process exiting then belies) are left out (D-482)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return _broker_was_up or not str(record.msg).startswith(self.prefixes)


class _Throttled(logging.Filter):
    """Let the first line of each kind in ``prefixes`` through, then at most one per
    ``every_s``, which says how many like it were left out meanwhile."""

    def __init__(
        self,
        prefixes: tuple[str, ...],
        every_s: float = CHATTER_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        kind = next((p for p in self.prefixes if msg.startswith(p)), None)
        if kind is None:
            return True
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.every_s:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return False
        self._last[kind] = now
        left_out = self._left_out.pop(kind, 0)
        if left_out:
            record.msg = f"{msg} ({left_out} more like this not logged since the last)"
        return True


# Library lines that carry a traceback for an outage we report ourselves, one line a
# round (D-387): asyncpg's pool, each time it fails to reconnect its floor of
# connections while the database is away. Kept, as one line with the error's words.
OUTAGE_TRACEBACKS: dict[str, tuple[str, ...]] = {
    "asyncpg.pool": ("Failed to restore the pool connection floor",),
}


class _WithoutTraceback(logging.Filter):
    """The record as one line: its exception's type and words after the message, no
    traceback (D-482)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and str(record.msg).startswith(self.prefixes):
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class _CurrentStderr:
    """``sys.stderr`` as it is when a line is written, not when logging was set up: a
    test runner or a CLI runner puts its own stream there for a while and closes it
    afterwards, and lines logged later went to the closed one (ValueError)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(
    level: str = "info", json_output: bool | None = True, *, access_log: bool = True
) -> None:
    """Log at ``level`` to stderr: JSON lines when ``json_output`` (None: unless stderr
    is a terminal), else the console format, coloured only on a terminal."""
    tty = sys.stderr.isatty()
    if json_output is None:
        json_output = not tty
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=tty)
    )
    # Libraries log through the standard library (uvicorn, asyncpg, aio-pika): their
    # records are rendered the same way, so the output stays one JSON object per line.
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                # A library's line inside a request or a message names it too.
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                add_trace_id,
            ],
            # exc_info of a library's record is a tuple: render it as text first, or the
            # JSON line says "<traceback object at 0x…>" instead of the traceback.
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(LEVELS[level])
    # A line per outgoing HTTP request is noise: connector metrics and wms_call keep them.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, LEVELS[level]))
    access = logging.getLogger(ACCESS_LOGGER)
    access.setLevel(LEVELS[level] if access_log else logging.WARNING)
    uvicorn_log = logging.getLogger("uvicorn.error")
    # uvicorn sets its loggers' own level from its log_level when a server starts (the
    # in-process sandboxes run at warning): ours decides, through the root.
    uvicorn_log.setLevel(logging.NOTSET)
    uvicorn_log.propagate = True
    uvicorn_log.filters = [
        f for f in uvicorn_log.filters if not isinstance(f, _FirstServerStartOnly)
    ]
    uvicorn_log.addFilter(_FirstServerStartOnly())
    for name, prefixes in RECONNECT_CHATTER.items():
        chatty = logging.getLogger(name)
        chatty.filters = [
            f for f in chatty.filters if not isinstance(f, _Throttled | _QuietUntilBrokerUp)
        ]
        chatty.addFilter(_QuietUntilBrokerUp(prefixes))
        chatty.addFilter(_Throttled(prefixes))
    for name, prefixes in OUTAGE_TRACEBACKS.items():
        noisy = logging.getLogger(name)
        noisy.filters = [f for f in noisy.filters if not isinstance(f, _WithoutTraceback)]
        noisy.addFilter(_WithoutTraceback(prefixes))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_trace_id,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=True,
    )


def access_log_enabled() -> bool:
    """Whether an access line per HTTP request is wanted (``logging.access_log``)."""
    return logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)


def bound_to_logs(**fields: object) -> contextlib.AbstractContextManager[object]:
    """``fields`` on every log line of this task while the block runs (a request's or a
    message's id), unless a line names them itself."""
    return structlog.contextvars.bound_contextvars(**fields)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
