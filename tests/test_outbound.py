"""The outbound kit the adapters share (core/outbound.py) and the adapter port
(core/platform.py): bounded records, one retry loop, and adapters that use only the port."""

from __future__ import annotations

import ast
import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from core.outbound import KeyedPacer, Limits, PartialSends, Stopped, is_transient, retried_here, retry
from core.platform import CorePort
from tests.conftest import REPO


def test_partly_sent_record_stays_bounded_and_keeps_what_is_in_use() -> None:
    record = PartialSends(size=100)
    busy = record.parts("telegram:1:1:busy")
    busy.append("m1")
    for n in range(5000):  # replies that failed half-way and were never completed
        record.parts(f"telegram:1:{n}:x").append("sent")
        if n % 50 == 0:
            record.parts("telegram:1:1:busy")  # still being retried: stays
    assert len(record) == 100
    assert record.parts("telegram:1:1:busy") == ["m1"]
    record.done("telegram:1:1:busy")
    assert record.parts("telegram:1:1:busy") == []


async def test_pacer_forgets_idle_chats() -> None:
    pacer = KeyedPacer(Limits(interval_s=0.01), max_idle_s=0.05)
    for chat in range(300):
        async with pacer.slot(chat, fence=False):
            pass
    assert len(pacer) > 1
    await asyncio.sleep(0.1)
    async with pacer.slot("new", fence=False):
        pass
    assert len(pacer) == 1


async def test_pacer_keeps_a_group_within_its_minute_budget_after_pruning() -> None:
    pacer = KeyedPacer(Limits(interval_s=0.0, per_minute=2), max_idle_s=0.05)
    for _ in range(2):
        async with pacer.slot(-1, fence=False):
            pass
    await asyncio.sleep(0.1)
    async with pacer.slot("other", fence=False):
        pass
    assert len(pacer) == 2  # the group's sends of this minute still count


async def test_retry_gives_up_without_a_last_pause_and_marks_the_error_retried() -> None:
    calls: list[float] = []

    async def down() -> None:
        calls.append(time.monotonic())
        raise ConnectionError("refused")

    started = time.monotonic()
    with pytest.raises(ConnectionError) as raised:
        await retry(down, what="test call failed", attempts=3, base_s=0.05, cap_s=0.05)
    assert len(calls) == 3
    assert time.monotonic() - calls[-1] < 0.04  # no pause after the last attempt
    assert time.monotonic() - started < 0.5
    assert not is_transient(raised.value)  # the caller does not retry it again


async def test_retry_raises_definite_errors_at_once_and_stops_when_told() -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad request")

    with pytest.raises(ValueError):
        await retry(refused, what="test call failed", base_s=0.01)
    assert calls == 1

    stopping = asyncio.Event()

    async def down() -> None:
        raise TimeoutError

    task = asyncio.create_task(retry(down, what="test call failed", stopping=stopping, base_s=5.0))
    await asyncio.sleep(0.05)
    stopping.set()
    with pytest.raises(Stopped):
        await asyncio.wait_for(task, 1.0)  # woken from its 2.5-5 s pause at once


async def test_a_delivery_error_is_not_retried_again_by_the_core() -> None:
    with pytest.raises(TimeoutError) as raised:
        async with retried_here():
            raise TimeoutError
    assert not is_transient(raised.value)
    assert is_transient(TimeoutError())


async def test_the_core_offers_everything_the_port_promises(make_core: Any) -> None:
    core = await make_core()
    assert isinstance(core, CorePort)
    missing = [name for name in CorePort.__annotations__ if not hasattr(core, name)]
    assert not missing, missing


def _core_attributes(path: Path) -> set[str]:
    """Attributes the module reads off `self.core` or a parameter named `core`."""
    used: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        on_self = isinstance(owner, ast.Attribute) and owner.attr == "core" and ast.unparse(owner) == "self.core"
        if on_self or (isinstance(owner, ast.Name) and owner.id == "core"):
            used.add(node.attr)
    return used


def test_adapters_use_only_the_core_port() -> None:
    port = {name for name in dir(CorePort) if not name.startswith("_")} | set(CorePort.__annotations__)
    modules = [*sorted((REPO / "adapters").glob("*/*.py")), REPO / "adapters" / "console.py"]
    checked = modules
    outside = {f"{m.relative_to(REPO)}: core.{a}" for m in checked for a in _core_attributes(m) - port}
    assert not outside, sorted(outside)
    assert len(checked) > 15


def test_adapter_modules_and_classes_stay_readable() -> None:
    """Issue 14: no module over 400 lines, no class over 250 (adapters and the kit)."""
    paths = [*sorted((REPO / "adapters").rglob("*.py")), REPO / "core" / "outbound.py", REPO / "core" / "platform.py"]
    too_long = []
    for path in paths:
        text = path.read_text()
        if len(text.splitlines()) > 400:
            too_long.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno and node.end_lineno - node.lineno >= 250:
                too_long.append(f"{path.relative_to(REPO)}: class {node.name}")
    assert not too_long, too_long
