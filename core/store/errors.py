"""Which MongoDB errors mean "try again" (core.errors.is_transient asks here)."""

from __future__ import annotations

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

# MongoDB server codes that mean "try again" (shutdown, failover, time limits).
_TRANSIENT_CODES = frozenset({6, 7, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})


def is_transient_store_error(exc: BaseException) -> bool:
    """The store unreachable, a failover or a time limit: the same write may succeed later."""
    if isinstance(exc, ConnectionFailure):
        return True
    if isinstance(exc, OperationFailure) and exc.code in _TRANSIENT_CODES:
        return True
    return isinstance(exc, PyMongoError) and exc.has_error_label("RetryableWriteError")


def is_store_error(exc: BaseException) -> bool:
    """Any error raised by the MongoDB driver (the store's own hop)."""
    return isinstance(exc, PyMongoError)
