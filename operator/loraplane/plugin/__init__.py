"""loraplane's vLLM general plugin (entry point group `vllm.general_plugins`, name
`loraplane`): engine residency and evictions per adapter (`loraplane.plugin.residency`).

vLLM calls `register` in every process it starts (API server, engine core, workers), and an
exception there aborts that process's start-up: nothing escapes it.
"""

from __future__ import annotations

import logging

# Under vLLM's own logger, so its lines carry the process and format of vLLM's.
log = logging.getLogger("vllm.plugins.loraplane")


def register() -> None:
    try:
        from loraplane.plugin import residency

        residency.install()
    except Exception as exc:  # a plugin must never stop vLLM from serving
        log.warning("loraplane residency off: %r", exc)
