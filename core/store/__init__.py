"""The only code that speaks MongoDB: named queries, each carrying the scope filter where the
data is scoped (tests/test_store_boundary.py keeps it so).

- `messages`: class `Store` (messages, replies, conversations' notices, users, quarantine) and
  the message document, with `leases` (workers, leases, adoption) and `deletions` (recorded
  forgets) as parts of it;
- `facts`: facts and learning markers; `settings`: channel settings and their audit log;
  `migrations`: start-up migrations; `web`: dashboard links, sessions, admin records;
- `dashboard`: the web pages' reads, one read-only object (`Store.dashboard`);
- `client`: opening the client; `errors`: which store errors are transient.

SecantusDB (the embedded default, and the tests' MongoDB) plans queries more simply than
mongod, and two shapes cost a scan of the whole collection there, growing with the history:
a filter containing `$or` (75 ms at 3,000 messages, 230 ms at 12,000), and a `findAndModify`
that matches (200 ms at 20,000). Queries on a message's path use equality and ranges and check
the rest in Python, and take a document with an update then a read.
"""

from core.store.ids import new_id
from core.store.messages import Store, message_doc
from core.store.states import DONE, FAILED, PENDING, PROCESSING, RECEIVED, SENDING

__all__ = ["DONE", "FAILED", "PENDING", "PROCESSING", "RECEIVED", "SENDING", "Store", "message_doc", "new_id"]
