"""loraplane's vLLM general plugin (entry point group `vllm.general_plugins`, name
`loraplane`): engine residency and evictions per adapter (`loraplane.plugin.residency`), that
residency on vLLM's own /metrics for the Endpoint Picker (`loraplane.plugin.feed`), and the AMX
permission vLLM's CPU kernels need and do not ask for (`loraplane.plugin.amx`).

vLLM calls `register` in every process it starts (API server, engine core, workers), and an
exception there aborts that process's start-up: nothing escapes it.
"""

from __future__ import annotations

import logging
import os

# Under vLLM's own logger, so its lines carry the process and format of vLLM's.
log = logging.getLogger("vllm.plugins.loraplane")
# Set by the first process that says the plugin is off; the processes it starts (the engine
# core, the workers) inherit it and stay silent, so one server start says it once.
SAID_OFF_ENV = "LORAPLANE_RESIDENCY_OFF_SAID"


def say_off(reason: str) -> None:
    if not os.environ.get(SAID_OFF_ENV):
        log.warning("loraplane residency off: %s", reason)
        os.environ[SAID_OFF_ENV] = "1"


def register() -> None:
    try:
        from loraplane.plugin import amx

        amx.allow()
    except Exception as exc:  # as below: vLLM serves on without it
        log.warning("loraplane: asking for AMX state failed: %r", exc)
    try:
        from loraplane.plugin import residency

        residency.install()
    except Exception as exc:  # a plugin must never stop vLLM from serving
        say_off(repr(exc))
    try:
        from loraplane.plugin import feed

        feed.register()
    except Exception as exc:  # as above; the EPP keeps what it last read (docs/metrics.md)
        log.warning("loraplane residency feed off: %r", exc)
