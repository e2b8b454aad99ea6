"""Answering: recall (the memories this conversation may read), the prompt, the model (streamed
where the platform and channel allow), and the short acknowledgement of a statement."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

from core import kinds, outbound, streaming
from core.answer import ACKNOWLEDGED, Source, build_prompt, cite, to_datetime, turn_line
from core.channel_settings import ChannelSettings
from core.errors import ModelMisconfigured, ModelUnavailable
from core.facts import arrange as arrange_facts
from core.facts import fact_source, is_fact_id
from core.models import Message, Reply, utcnow
from core.pipeline.delivery import fence_for
from core.pipeline.documents import memory_text, stored_media
from core.privacy import readable_scopes
from core.render import shorten
from core.services import Services

MODEL_DOWN = "I couldn't reach the model; your message is saved. Please ask again in a moment."
# What a prompt carries of memories, whatever `recall_k` says and however long they are: the
# model's context is finite, and one pasted log must not push out every other source.
MAX_PROMPT_SOURCES = 20
MAX_PROMPT_SOURCE_CHARS = 12_000

_ANAPHORA = {"that", "it", "this", "those", "these", "them", "they", "he", "she", "him", "her", "one", "why",
             "so", "and", "there", "then", "more", "else"}


def bounded(sources: list[Source], max_count: int = MAX_PROMPT_SOURCES,
            max_chars: int = MAX_PROMPT_SOURCE_CHARS) -> list[Source]:
    """At most `max_count` sources, their texts shortened so that together they stay within
    `max_chars` (each gets an equal share; a short one leaves its unused share to the rest)."""
    kept = sources[:max_count]
    budget = max_chars
    result = []
    for i, source in enumerate(kept):
        share = budget // (len(kept) - i)
        text = source.text if len(source.text) <= share else shorten(source.text, share)
        quote = source.quote if source.quote is None or len(source.quote) <= share else shorten(source.quote, share)
        budget -= len(text)
        result.append(dataclasses.replace(source, text=text, quote=quote))
    return result


def not_remembering(memory_off: bool) -> str:
    if memory_off:
        return "Noted, but memory is off in this channel, so I won't remember it."
    return "Noted, but you opted out of memory, so I won't remember it (/optin resumes)."


def _is_follow_up(question: str) -> bool:
    """A short question leaning on what came before ("why do you say that?", "and the second one?")."""
    words = re.findall(r"[\w']+", question.lower())
    return 0 < len(words) <= 8 and any(w in _ANAPHORA for w in words)


class Answering:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def recall(
        self, message: Message, query: str, k: int, exclude_id: str | None = None,
        turns: list[dict[str, Any]] | None = None,
    ) -> list[Source]:
        """Top memories for `query` within the scopes this conversation may read. A follow-up
        ("why?", "and the second one?") that finds nothing by itself is searched together with
        what was said before it in `turns`."""
        sources = await self._recall(message, query, k, exclude_id)
        if not sources and turns and _is_follow_up(query):
            earlier = next((t for t in reversed(turns) if t.get("kind") != kinds.REPLY), None)
            if earlier is not None and earlier.get("text"):
                sources = await self._recall(message, f"{earlier['text']} {query}", k, exclude_id)
        return sources

    async def _recall(self, message: Message, query: str, k: int, exclude_id: str | None) -> list[Source]:
        s = self.services
        scopes = readable_scopes(message)
        hits = []
        for scope in scopes:
            # 2k: messages a recalled fact carries are left out (core.facts.arrange)
            hits.extend(await s.index.search(scope, query, 2 * k + 1, now=message.ts.timestamp()))
        hits.sort(key=lambda h: h.score, reverse=True)
        ids = [h.memory_id for h in hits if h.memory_id != exclude_id]
        docs = await s.store.messages_by_ids(ids, scopes)
        # Learned facts are memories too (core.facts): current ones, history only for the past.
        facts = await s.facts.by_ids([i for i in ids if is_fact_id(i)], scopes)
        scores = {h.memory_id: h.score for h in hits}
        arranged = await arrange_facts(s.facts, ids, docs, facts, query, scopes, scores)
        said = await s.facts.source_messages([doc for kind, doc in arranged if kind == "fact"])
        sources: list[Source] = []
        for kind, found in arranged:
            if kind == "fact":
                sources.append(fact_source(len(sources) + 1, found, said))
                if len(sources) == k:
                    break
                continue
            media_kind = found.get("media_kind")
            text = memory_text(found["text"], stored_media(found))
            sources.append(
                Source(len(sources) + 1, found["_id"], found["author_name"], to_datetime(found["ts"]), text,
                       found.get("link"), media_kind or "text")
            )
            if len(sources) == k:
                break
        return sources

    async def answer(
        self, message: Message, question: str, settings: ChannelSettings, exclude_id: str | None, reasoning: bool
    ) -> Reply:
        s = self.services
        turns = await s.store.recent_turns(message, s.config.context_turns)
        if not s.answerer.has_model:
            sources = await self.recall(message, question, s.config.retrieval_only_k, exclude_id, turns)
            explain = await s.store.first_time(message.conversation_key, "retrieval_only")
            return s.answerer.retrieval_only(sources, explain)
        sources = bounded(await self.recall(message, question, s.config.recall_k, exclude_id, turns))
        prompt = build_prompt(
            question, message.author_name, sources, self.turn_lines(turns), bot_name=s.config.bot_name,
            platform=message.platform, is_dm=message.is_dm, persona=settings.persona, now=utcnow(),
        )
        return await self._model_reply(message, prompt, sources, settings, reasoning)

    async def _model_reply(
        self, message: Message, prompt: list[dict[str, str]], sources: list[Source], settings: ChannelSettings,
        reasoning: bool,
    ) -> Reply:
        """Call the model, streamed into the conversation where the platform and the channel's
        `streaming` setting allow (see core.streaming); the Reply is the same either way."""
        s = self.services
        platform = s.platforms[message.platform]
        keep_markers = settings.citations == "on"
        outbound.use_fence(fence_for(s, message))
        live = streaming.open_live(platform, message, enabled=settings.streaming == "on")
        started = time.monotonic()
        try:
            async with platform.typing(message):
                if live is None:
                    raw = await s.answerer.complete(prompt, reasoning=reasoning)
                else:
                    raw = await live.run(
                        s.answerer.stream(prompt, reasoning=reasoning),
                        lambda text: streaming.preview_text(text, sources, keep_markers),
                    )
        except ModelUnavailable as exc:
            s.metrics.inc("mnemo_model_errors_total")
            return Reply(str(exc) if isinstance(exc, ModelMisconfigured) else MODEL_DOWN, is_error=True)
        finally:
            s.metrics.observe("mnemo_model_seconds", time.monotonic() - started,
                              mode="reasoning" if reasoning else "fast")
        text, footnotes = cite(raw, sources, keep_markers=keep_markers)
        return Reply(text, footnotes)

    async def acknowledge(self, message: Message, said: str, remembered: bool, settings: ChannelSettings) -> Reply:
        """A statement gets a short acknowledgement: one line without a model; with one, a
        natural short reply (told that this is a statement), never with footnotes."""
        s = self.services
        small_talk = kinds.small_talk_reply(said)
        if small_talk is None and not remembered:
            return Reply(not_remembering(settings.memory == "off"))
        if not s.answerer.has_model:
            return Reply(small_talk or ACKNOWLEDGED)
        turns = await s.store.recent_turns(message, s.config.context_turns)
        prompt = build_prompt(
            said, message.author_name, [], self.turn_lines(turns), bot_name=s.config.bot_name,
            platform=message.platform, is_dm=message.is_dm, persona=settings.persona, now=utcnow(), told=True,
        )
        started = time.monotonic()
        try:
            async with s.platforms[message.platform].typing(message):
                raw = await s.answerer.complete(prompt)
        except ModelUnavailable as exc:
            s.metrics.inc("mnemo_model_errors_total")
            return Reply(str(exc) if isinstance(exc, ModelMisconfigured) else MODEL_DOWN, is_error=True)
        finally:
            s.metrics.observe("mnemo_model_seconds", time.monotonic() - started, mode="fast")
        text, _ = cite(raw, [], keep_markers=False)  # no sources: any [n] is dropped
        return Reply(text or ACKNOWLEDGED)

    def turn_lines(self, turns: list[dict[str, Any]]) -> list[str]:
        lines = []
        for turn in turns:
            if turn.get("kind") == kinds.REPLY:
                lines.append(turn_line(self.services.config.bot_name, turn.get("text") or ""))
                continue
            said = memory_text(turn.get("text") or "", stored_media(turn))
            if said:
                lines.append(turn_line(turn["author_name"], said))
        return lines
