"""Logs are one JSON object per line, ours and the libraries' alike."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from stockkeeper.observability.logging import configure, get_logger


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
