"""The only code that speaks MongoDB: named queries, each carrying the scope filter where the
data is scoped (tests/test_store_boundary.py keeps it so).

- `messages`: class `Store` (messages, replies, conversations' notices, users, workers,
  deletions, quarantine) and the message document;
- `facts`: facts and learning markers; `settings`: channel settings and their audit log;
  `migrations`: start-up migrations; `web`: dashboard links, sessions, admin records;
- `dashboard`: the web pages' reads, one read-only object (`Store.dashboard`).
"""

from core.store.messages import (
    DONE,
    FAILED,
    PENDING,
    PROCESSING,
    RECEIVED,
    SENDING,
    Store,
    message_doc,
    new_id,
)

__all__ = ["DONE", "FAILED", "PENDING", "PROCESSING", "RECEIVED", "SENDING", "Store", "message_doc", "new_id"]
