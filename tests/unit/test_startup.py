"""Start-up's own rules that need no cluster."""

from __future__ import annotations

import logging

from kopf._core.engines import posting

from loraplane.handlers.startup import _not_into_a_terminating_namespace


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord(posting.logger.name, logging.ERROR, __file__, 1, message, (), None)


def test_events_refused_by_a_terminating_namespace_make_no_log_lines() -> None:
    # The logger start-up filters is the one kopf posts Events with (a rename would undo it).
    assert posting.logger.name == "kopf._core.engines.posting"
    refused = record(
        "Request attempt #5/9 failed; will retry: POST .../events -> APIForbiddenError(... "
        "'causes': [{'reason': 'NamespaceTerminating', ...}]"
    )
    assert not _not_into_a_terminating_namespace(refused)
    assert _not_into_a_terminating_namespace(record("Request attempt #1/9 failed: 500"))
