"""How a worker loop logs a failed round (workers/round_errors.py, D-387, D-433): an
unreachable database is a warning naming the error, anything else an error with its
traceback."""

from __future__ import annotations

import structlog

from stockkeeper.observability.logging import get_logger
from stockkeeper.store.errors import StoreError, StoreUnavailable
from stockkeeper.workers.round_errors import log_round_failed


def test_an_unreachable_database_is_one_warning_without_a_traceback() -> None:
    log = get_logger("test.rounds")
    refused = StoreUnavailable("connection refused")
    refused.__cause__ = ConnectionRefusedError(111, "Connect call failed")
    with structlog.testing.capture_logs() as logs:
        log_round_failed(log, "poller.failed", refused, connector="mp")
    [entry] = logs
    assert entry["log_level"] == "warning"
    assert "exc_info" not in entry
    assert entry["unreachable"] is True
    assert entry["connector"] == "mp"
    assert entry["error"] == "StoreUnavailable: connection refused"


def test_any_other_failure_is_an_error_with_its_traceback() -> None:
    log = get_logger("test.rounds")
    bug = StoreError("syntax error at or near SELECT")
    with structlog.testing.capture_logs() as logs:
        log_round_failed(log, "propagator.claim_failed", bug, channel="shop")
    [entry] = logs
    assert entry["log_level"] == "error"
    assert entry["exc_info"] is bug
    assert "unreachable" not in entry
