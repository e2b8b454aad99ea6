"""Document ids."""

from __future__ import annotations

import secrets

_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


def new_id(prefix: str = "m") -> str:
    """Short ids people can type (`/forget m7kq2x9ab`)."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))
