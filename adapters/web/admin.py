"""The admins' page: the channels this session administers (as the platform said when the link
was made; the local operator administers the web platform), every setting editable and
validated as in chat, the audit log of changes, and health."""

from __future__ import annotations

import logging
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from adapters.web.auth import may_administer
from adapters.web.html import csrf_field, e, notice, page, when
from core.channel_settings import CHOICES, KEYS, SettingError, normalize, valid_values
from core.web_links import WebSession

if TYPE_CHECKING:
    from core.platform import CorePort

AUDIT_ROWS = 50


class RecentErrors(logging.Handler):
    """The last warnings and errors this worker logged, for the health section."""

    def __init__(self, size: int = 20) -> None:
        super().__init__(level=logging.WARNING)
        self.records: deque[tuple[datetime, str, str]] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            moment = datetime.fromtimestamp(record.created, tz=UTC)
            self.records.append((moment, record.levelname, f"{record.name}: {record.getMessage()}"[:300]))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


async def channels_of(core: CorePort, session: WebSession) -> list[str]:
    keys = set(session.admin_of)
    if session.dm_conversation:
        keys.add(session.dm_conversation)
    if session.operator:
        keys.add(f"web:dm-{session.author_id}")
        keys.update(await core.dashboard.web_conversations())
    return sorted(keys)


async def admin_page(core: CorePort, session: WebSession, errors: RecentErrors, message: str | None = None,
                     error: bool = False, rejected: Any = None) -> web.Response:
    """`rejected`: a form that failed validation, shown again as typed so it can be corrected."""
    channels = await channels_of(core, session)
    titles = await core.dashboard.channel_titles(channels)
    if session.dm_conversation:
        titles[session.dm_conversation] = "Your DM with Mnemo"
    typed = rejected if rejected is not None else {}
    forms = [await _channel_form(core, session, key, titles.get(key),
                                 typed if typed.get("conversation") == key else {}) for key in channels]
    if not forms:
        forms = [("<p>You don't administer any channel Mnemo knows of. Send /dashboard in a group where "
                  "you are an admin to manage it here.</p>")]
    audit = await _audit(core, channels)
    # Health is for admins of a group or of the web platform, not for someone with only their DM.
    health = await _health(core, errors) if session.operator or session.admin_of else ""
    body = (
        f"<h1>Your channels</h1>{notice(message, error)}{''.join(forms)}"
        f'<section aria-labelledby="audit-h"><h2 id="audit-h">Changes</h2>{audit}</section>{health}'
    )
    return page("Channels", body, session, current="/admin")


async def _channel_form(core: CorePort, session: WebSession, key: str, title: str | None, typed: Any) -> str:
    current = await core.settings.get(key)
    rows = []
    for name in KEYS:
        value = str(typed[name]) if name in typed else getattr(current, name)
        field_id = f"{key}-{name}".replace(":", "-")
        if name in CHOICES:
            options = "".join(
                f'<option value="{e(v)}"{" selected" if v == value else ""}>{e(v)}</option>' for v in CHOICES[name]
            )
            control = f'<select id="{e(field_id)}" name="{e(name)}">{options}</select>'
        else:
            control = (f'<input id="{e(field_id)}" name="{e(name)}" value="{e(value)}" '
                       f'aria-describedby="{e(field_id)}-hint">')
        rows.append(
            f'<div class="setting"><label for="{e(field_id)}">{e(name)}</label>{control}'
            f'<p class="hint" id="{e(field_id)}-hint">{e(valid_values(name))}</p></div>'
        )
    heading = e(title) if title else e(key)
    return (
        f'<section class="channel" aria-label="Channel {heading}"><h2>{heading}</h2><p class="meta">{e(key)}</p>'
        f'<form method="post" action="/admin/settings">{csrf_field(session)}'
        f'<input type="hidden" name="conversation" value="{e(key)}">{"".join(rows)}'
        '<div class="actions"><button type="submit">Save settings</button></div></form></section>'
    )


async def _audit(core: CorePort, channels: list[str]) -> str:
    rows = [
        f"<tr><td>{when(doc['at'])}</td><td>{e(doc['conversation_key'])}</td><td>{e(doc['who'])}</td>"
        f"<td>{e(doc['key'])}</td><td>{e(doc['old'] or '(none)')} -&gt; {e(doc['new'] or '(none)')}</td></tr>"
        for doc in await core.dashboard.setting_changes(channels, AUDIT_ROWS)
    ]
    if not rows:
        return "<p>No changes yet.</p>"
    return (
        '<div class="table"><table><thead><tr><th scope="col">When</th><th scope="col">Channel</th>'
        '<th scope="col">Who</th><th scope="col">Setting</th><th scope="col">Change</th></tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table></div>'
    )


async def save_settings(core: CorePort, session: WebSession, form: Any) -> tuple[int, str, bool]:
    """Apply the changed settings of one channel. Returns (HTTP status, notice, is_error)."""
    key = str(form.get("conversation", ""))
    if not await may_administer(core, session, key):
        return 403, "Only this channel's admins can change its settings; nothing was changed.", True
    current = await core.settings.get(key)
    changes, problems = [], []
    for name in KEYS:
        if name not in form:
            continue
        value = str(form[name])
        if name == "persona" and not value.strip():
            value = "none"  # an emptied box clears the persona
        try:
            if normalize(name, value) == getattr(current, name):
                continue
            old, new = await core.settings.set(key, name, value, who=session.user_key)
            changes.append(f"{name}: {old or '(none)'} -> {new or '(none)'}")
        except SettingError as exc:
            problems.append(str(exc))
    if problems:
        return 400, " ".join(problems + (["Saved: " + "; ".join(changes)] if changes else [])), True
    return 200, ("Saved: " + "; ".join(changes)) if changes else "Nothing changed.", False


async def _health(core: CorePort, errors: RecentErrors) -> str:
    found = await core.health()
    checks = {"MongoDB": found["mongodb"], "Chroma": found["chroma"]}
    checks["Model"] = await _model_status(core)
    model_errors = sum(core.metrics.counters.get("mnemo_model_errors_total", {}).values())
    rows = "".join(f"<tr><th scope=\"row\">{e(k)}</th><td>{e(v)}</td></tr>" for k, v in checks.items())
    rows += f'<tr><th scope="row">Platforms connected</th><td>{e(", ".join(sorted(core.platforms)) or "none")}</td></tr>'
    rows += f'<tr><th scope="row">Queue depth</th><td>{core.pending_jobs}</td></tr>'
    rows += f'<tr><th scope="row">Model errors since start</th><td>{int(model_errors)}</td></tr>'
    recent = "".join(
        f"<li>{when(moment)} {e(level)} {e(text)}</li>" for moment, level, text in reversed(errors.records)
    ) or "<li>None.</li>"
    return (
        f'<section aria-labelledby="health-h"><h2 id="health-h">Health</h2><div class="table"><table>'
        f'<tbody>{rows}</tbody></table></div><h3>Last errors</h3><ul class="errors">{recent}</ul></section>'
    )


async def _model_status(core: CorePort) -> str:
    """Whether the model endpoint answers (an HTTP request to its base, not a paid completion)."""
    model = core.config.model
    if not model:
        return "none configured (retrieval-only answers)"
    base = core.config.llm_api_base
    if not base:
        return f"{model} (provider's default endpoint; reachability not probed)"
    try:
        timeout = aiohttp.ClientTimeout(total=3)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(base.rstrip("/") + "/models") as resp:
            return f"{model}: reachable (HTTP {resp.status})"
    except Exception as exc:  # noqa: BLE001 - that is the answer
        return f"{model}: unreachable ({type(exc).__name__})"
