"""Processing states of a stored message (see core.pipeline)."""

RECEIVED = "received"
PROCESSING = "processing"
SENDING = "sending"  # the reply is going out: a crash here may have delivered it already
DONE = "done"
FAILED = "failed"
PENDING = [RECEIVED, PROCESSING, SENDING]
