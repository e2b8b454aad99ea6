"""Only core/store/ speaks MongoDB, so "every read carries the scope filter" is checked in one
place. Every module under core/, adapters/ and bot/ is parsed; outside core/store/ none may
import pymongo, reach the raw database (`store.db`, `db[...]`) or call a collection method."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "adapters", "bot")
STORE = Path("core/store")

# Collection methods whose names nothing else in the code base uses: flagged on any receiver.
MONGO_ONLY = frozenset({
    "find_one", "find_one_and_update", "find_one_and_delete", "find_one_and_replace", "insert_one",
    "insert_many", "update_one", "update_many", "replace_one", "delete_one", "delete_many", "count_documents",
    "estimated_document_count", "create_index", "create_indexes", "drop_index", "bulk_write", "aggregate",
    "list_collection_names", "watch",
})
# Names shared with other APIs (str.find, dict.update, Chroma's collection.delete): flagged
# only when called on an attribute or variable named like one of our collections.
SHARED = frozenset({"find", "distinct", "update", "delete", "insert", "drop", "rename"})
# `client.admin.command(...)`, `db.command(...)`: server commands.
COMMAND_RECEIVERS = frozenset({"admin", "db"})
COLLECTIONS = frozenset({
    "messages", "replies", "conversations", "users", "audit", "workers", "deletions", "facts", "markers",
    "marks", "links", "sessions", "admins", "migrations", "quarantine", "health",
})

def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def violations(source: str) -> list[str]:
    """What in this module speaks MongoDB, as 'line: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{line}: import {a.name}" for a in node.names if a.name.split(".")[0] == "pymongo"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pymongo":
            found.append(f"{line}: from {node.module} import")
        elif isinstance(node, ast.Subscript) and _name(node.value) == "db":
            found.append(f"{line}: db[...]")
        elif isinstance(node, ast.Attribute) and node.attr == "db" and _name(node.value) == "store":
            found.append(f"{line}: store.db")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, receiver = node.func.attr, _name(node.func.value)
            if (method in MONGO_ONLY or (method in SHARED and receiver in COLLECTIONS)
                    or (method == "command" and receiver in COMMAND_RECEIVERS)):
                found.append(f"{line}: {receiver}.{method}(...)")
    return found


def speaking_mongodb(root: Path) -> dict[str, list[str]]:
    """Modules outside core/store/ that speak MongoDB, with where."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            if relative.is_relative_to(STORE):
                continue
            found = violations(path.read_text(encoding="utf-8"))
            if found:
                out[relative.as_posix()] = found
    return out


def test_only_the_store_speaks_mongodb() -> None:
    offenders = speaking_mongodb(REPO)
    assert offenders == {}, f"MongoDB outside core/store/ (add a named query there): {offenders}"


def test_the_check_sees_each_way_of_speaking_mongodb() -> None:
    # The rules above, on code that breaks them, and on look-alikes that do not.
    bad = """
import pymongo
from pymongo.errors import DuplicateKeyError
async def f(core, store, links):
    core.store.db["facts"]
    db = store.db
    await core.store.messages.find({}).to_list()
    await self.facts.update_one({}, {})
    await links.insert_one({})
    await core.store.replies.distinct("x")
    await client.admin.command("ping")
"""
    assert len(violations(bad)) == 10, violations(bad)
    fine = """
def g(text, settings, collection, facts):
    text.find("x"); settings.update({"a": 1}); collection.delete(ids=["m1"])
    facts.about("u", []); core.store.get_user("u")
"""
    assert violations(fine) == []
