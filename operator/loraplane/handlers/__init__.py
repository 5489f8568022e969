"""kopf handlers: thin glue between watch events and the pure code. Importing registers them."""

from loraplane.handlers import adapter, base_model, merge, pods, startup

__all__ = ["adapter", "base_model", "merge", "pods", "startup"]
