"""The web platform: chat and dashboard pages on the one HTTP server."""

from adapters.web.adapter import WebAdapter

__all__ = ["WebAdapter"]
