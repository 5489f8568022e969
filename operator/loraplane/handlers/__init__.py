"""kopf handlers: thin glue between watch events and the pure code. Importing registers them."""

from loraplane.handlers import base_model, startup

__all__ = ["base_model", "startup"]
