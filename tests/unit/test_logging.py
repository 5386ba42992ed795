"""Logs are one JSON object per line, ours and the libraries' alike."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from stockkeeper.observability.logging import (
    ACCESS_LOGGER,
    bound_to_logs,
    configure,
    get_logger,
)


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """configure() sets process-wide levels: put them back, so a test run after these
    in the same process (one counting a request's log lines, say) sees what it would
    alone."""
    names = ("", ACCESS_LOGGER, "uvicorn", "uvicorn.access", "uvicorn.error")
    levels = {n: logging.getLogger(n).level for n in names}
    handlers = list(logging.getLogger().handlers)
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)
    logging.getLogger().handlers = handlers
    structlog.reset_defaults()


def test_library_records_are_json_lines_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", json_output=True)
    try:
        # (A name no other test configures: in-process sandboxes set uvicorn's up.)
        logging.getLogger("a_library.server").info("Started server process [%d]", 42)
        logging.getLogger("httpx").info("HTTP Request: GET http://x")  # quiet below warning
        get_logger("stockkeeper.test").info("ours", n=1)
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        # The process-wide setup would outlive this test's captured stderr.
        logging.getLogger().handlers = []
        structlog.reset_defaults()
    assert [(x["event"], x["level"]) for x in lines] == [
        ("Started server process [42]", "info"),
        ("ours", "info"),
    ]
    assert lines[0]["logger"] == "a_library.server"


def test_a_library_traceback_is_rendered_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", json_output=True)
    try:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            logging.getLogger("a_library.conn").exception("connection lost")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        logging.getLogger().handlers = []
        structlog.reset_defaults()
    (line,) = lines
    assert line["event"] == "connection lost"
    assert "traceback object" not in json.dumps(line)
    assert "Traceback (most recent call last)" in line["exception"]
    assert "ZeroDivisionError: division by zero" in line["exception"]


def test_the_pools_reconnect_failure_is_one_line_without_its_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """D-482: while the database is away asyncpg's pool logs each failed refill with a
    traceback; the outage is ours to report (D-387), so its line keeps only the words."""
    configure("info", json_output=True)
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except ConnectionRefusedError:
            logging.getLogger("asyncpg.pool").warning(
                "Failed to restore the pool connection floor; retrying", exc_info=True
            )
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        logging.getLogger().handlers = []
        structlog.reset_defaults()
    (line,) = lines
    assert line["event"] == (
        "Failed to restore the pool connection floor; retrying: "
        "ConnectionRefusedError: [Errno 111] Connect call failed"
    )
    assert "exception" not in line
    assert line["level"] == "warning"


def test_unset_json_means_json_off_a_terminal_and_console_lines_carry_no_colours(
    capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        configure("info", json_output=None)  # captured stderr is not a terminal
        get_logger("stockkeeper.test").info("auto", n=1)
        (line,) = capsys.readouterr().err.splitlines()
        assert json.loads(line)["event"] == "auto"

        configure("info", json_output=False)
        get_logger("stockkeeper.test").info("console", n=2)
        (line,) = capsys.readouterr().err.splitlines()
    finally:
        logging.getLogger().handlers = []
        structlog.reset_defaults()
    assert "console" in line
    assert "n=2" in line
    assert "\x1b[" not in line  # no ANSI codes where no terminal reads them


def test_uvicorn_says_started_server_process_once_per_process(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("info", json_output=True)
    try:
        for pid in (42, 42):  # two servers in one process
            logging.getLogger("uvicorn.error").info("Started server process [%d]", pid)
        logging.getLogger("uvicorn.error").info("Uvicorn running on http://x")
        events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    finally:
        logging.getLogger().handlers = []
        structlog.reset_defaults()
    assert events == ["Started server process [42]", "Uvicorn running on http://x"]


def test_the_access_log_switch(capsys: pytest.CaptureFixture[str]) -> None:
    from stockkeeper.observability.logging import access_log_enabled

    try:
        configure("info", json_output=True, access_log=False)
        assert not access_log_enabled()
        configure("info", json_output=True)
        assert access_log_enabled()
        configure("warning", json_output=True)
        assert not access_log_enabled()
    finally:
        logging.getLogger().handlers = []
        structlog.reset_defaults()


def test_a_library_line_inside_a_request_names_the_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("info", json_output=True)
    try:
        with bound_to_logs(request_id="req-7"):
            logging.getLogger("a_library.pool").warning("slow acquire")
            get_logger("stockkeeper.test").info("ours")
        logging.getLogger("a_library.pool").warning("outside")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        logging.getLogger().handlers = []
        structlog.reset_defaults()
    assert [(x["event"], x.get("request_id")) for x in lines] == [
        ("slow acquire", "req-7"),
        ("ours", "req-7"),
        ("outside", None),
    ]


def test_lines_go_to_the_stderr_of_the_moment_not_the_one_at_set_up() -> None:
    """A CLI runner (or a test's capture) puts a stream of its own in sys.stderr while
    logging is set up, and closes it afterwards: later lines still reach stderr."""
    import contextlib
    import io

    first = io.StringIO()
    with contextlib.redirect_stderr(first):  # as a CLI runner swaps it
        configure("info", json_output=True)
    first.close()
    second = io.StringIO()
    with contextlib.redirect_stderr(second):
        structlog.get_logger("test").info("after.the.swap")
        logging.getLogger("some.library").warning("library line")
    lines = [json.loads(line) for line in second.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["after.the.swap", "library line"]
