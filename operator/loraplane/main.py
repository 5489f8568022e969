"""Entry point of the operator (`loraplane-operator`): kopf with our handlers registered."""

from __future__ import annotations

import asyncio
import logging

from loraplane.cli import parse_args
from loraplane.config import Settings, settings


def run_operator() -> None:
    parse_args(
        "loraplane-operator",
        "The loraplane operator: serves LoRAAdapters on the vLLM pods of BaseModelDeployments.",
        Settings,
    )
    # Imported only now: --help and --version should not pay for kopf and every handler module.
    import kopf

    import loraplane.handlers  # noqa: F401  (registers the handlers)

    cfg = settings()
    level = logging.getLevelNamesMapping()[cfg.log_level]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # kopf logs every successful handler run at INFO: one line per pod event and timer tick.
    logging.getLogger("kopf.objects").setLevel(max(logging.WARNING, level))
    if cfg.trace:
        logging.getLogger("loraplane.trace").setLevel(logging.DEBUG)
    asyncio.run(
        kopf.operator(
            clusterwide=not cfg.namespaces,
            namespaces=list(cfg.namespaces),
            liveness_endpoint=f"http://0.0.0.0:{cfg.health_port}/healthz",
        )
    )


if __name__ == "__main__":
    run_operator()
