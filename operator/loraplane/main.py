"""Entry point of the operator (`loraplane-operator`): kopf with our handlers registered."""

from __future__ import annotations

import asyncio
import logging

import kopf

import loraplane.handlers  # noqa: F401  (registers the handlers)
from loraplane.config import settings


def run_operator() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # kopf logs every successful handler run at INFO: one line per pod event and timer tick.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    ns = settings().namespace
    asyncio.run(
        kopf.operator(
            clusterwide=ns is None,
            namespaces=[ns] if ns else [],
            liveness_endpoint=f"http://0.0.0.0:{settings().health_port}/healthz",
        )
    )


if __name__ == "__main__":
    run_operator()
