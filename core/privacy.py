"""Which memory scopes a conversation may read.

The only place that decides it. A DM reads only that user's DM scope on that platform; a group
reads only itself. Retrieval takes this list and nothing else, so no prompt wording can widen it.
"""

from __future__ import annotations

from core.models import Message, Scope


def readable_scopes(message: Message) -> list[Scope]:
    return [message.scope]
