"""Typed errors that cross the core/adapter boundary."""


class FatalPlatformError(Exception):
    """A platform refused us for a reason only a person can fix (bad token, missing intent).
    The message says exactly what to do; `mnemo run` prints it and exits non-zero."""


class ModelUnavailable(Exception):
    """The language model could not be reached or failed after retries."""


class MediaError(Exception):
    """An attachment could not be read; the message is phrased for the sender."""


class MemoryUnavailable(Exception):
    """The memory index (Chroma) could not be read or written: an outage, not "nothing there"."""
