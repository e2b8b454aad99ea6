"""Typed errors that cross the core/adapter boundary."""


class FatalPlatformError(Exception):
    """A platform refused us for a reason only a person can fix (bad token, missing intent).
    The message says exactly what to do; `mnemo run` prints it and exits non-zero."""


class ModelUnavailable(Exception):
    """The language model could not be reached or failed after retries."""


class ModelMisconfigured(ModelUnavailable):
    """The provider refused the key or does not know the model: only the operator can fix it.
    The message is the reply people get."""


class MediaError(Exception):
    """An attachment could not be read; the message is phrased for the sender."""


class MemoryUnavailable(Exception):
    """The memory index (Chroma) could not be read or written: an outage, not "nothing there"."""



def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same work later may succeed (the store unreachable, a failover, a
    timeout), as opposed to a definite failure (a document that can never be stored): only
    transient errors are retried; the rest are reported or quarantined."""
    from core.store.errors import is_transient_store_error

    if isinstance(exc, (MemoryUnavailable, TimeoutError, ConnectionError)):
        return True
    return is_transient_store_error(exc)
