"""Processing of one stored message, in its conversation's turn: claim, read media, remember,
decide whether (and how) to answer, then hand the reply to delivery."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from core import commands, kinds
from core.answer import Source
from core.channel_settings import ChannelSettings
from core.errors import MediaError, MemoryUnavailable
from core.media import MediaText
from core.models import Message, Reply
from core.pipeline.answering import Answering, not_remembering
from core.pipeline.delivery import Delivery
from core.pipeline.documents import memory_item, memory_text
from core.platform import Platform
from core.render import shorten
from core.services import Services
from core.store import DONE, FAILED

log = logging.getLogger(__name__)

_MENTION = re.compile(r"(<@[!&]?\w+>|@\w+)")
EMPTY = "Your message was empty. Send me some text, a voice note or an image."
INTERRUPTED = (
    "I was interrupted while sending my answer to this message. If it didn't reach you, please ask "
    "again; your message is saved."
)
MEMORY_DOWN = "I can't reach my memory right now; your message is saved. Please ask again in a moment."
REREAD = "I was restarted before I could read your attachment; your message is saved. Please send the file again."
GAVE_UP = "I couldn't finish answering this message after several tries. It is saved; please ask again."
WENT_WRONG = "Something went wrong on my side; your message is saved."


@dataclass
class Outcome:
    """What processing left of a message, known without reading it back: whether its text is
    withheld (opted out, `memory off`), whether it became a memory, and whether this worker
    finished it (done or failed)."""

    withheld: bool = False
    remembered: bool = False
    finished: bool = False


class Processor:
    def __init__(self, services: Services, answering: Answering, delivery: Delivery) -> None:
        self.services = services
        self.answering = answering
        self.delivery = delivery

    async def process(self, message: Message) -> Outcome | None:
        """None when this worker did not process it (no adapter, already finished, or taken
        by another worker, which then also does what follows processing)."""
        outcome = await self._process(message)
        if outcome is not None:
            await self.after_processing(message, outcome)
        return outcome

    async def _process(self, message: Message) -> Outcome | None:
        s = self.services
        platform = s.platforms.get(message.platform)
        if platform is None:
            log.error("no adapter registered for %s", message.platform)
            return None
        doc = await s.store.claim(message.event_key, s.worker_id)
        if doc is None:
            return None  # finished, or another worker adopted it
        outcome = Outcome(withheld=bool(doc.get("withheld")))
        # The stored text is the message's text: an edit that arrived while it was queued
        # changed the document, not this in-memory copy of the original event.
        message.text = doc.get("text") or ""
        deliver = self.delivery.deliver
        if doc.get("interrupted_send") and not getattr(platform, "checks_posted", False):
            # A worker died while sending the answer: it may have arrived. Where the platform
            # cannot tell us what was posted (Telegram), sending it again could answer twice,
            # so the message is failed with a reply instead.
            outcome.finished = await deliver(message, doc, platform, Reply(INTERRUPTED, is_error=True), state=FAILED)
            return outcome
        if doc.get("interrupted_send"):
            message.reply_context["adopted"] = True  # answered whole; the adapter checks what was posted
        if doc["attempts"] > s.config.max_attempts:
            log.warning("message %s failed after %d attempts", doc["_id"], doc["attempts"] - 1)
            outcome.finished = await deliver(message, doc, platform, Reply(GAVE_UP, is_error=True), state=FAILED)
            return outcome
        try:
            reply = await self._work(message, doc, platform, outcome)
        except MemoryUnavailable as exc:
            log.error("memory index unavailable while answering %s: %s", doc["_id"], exc)
            s.metrics.inc("mnemo_memory_errors_total")
            outcome.finished = await deliver(message, doc, platform, Reply(MEMORY_DOWN, is_error=True), state=FAILED)
            return outcome
        except Exception:
            log.exception("processing failed for %s", message.event_key)
            outcome.finished = await deliver(message, doc, platform, Reply(WENT_WRONG, is_error=True), state=FAILED)
            return outcome
        if reply is None:
            outcome.finished = await s.store.finish(doc["_id"], DONE, owner=s.worker_id, answered=False)
        else:
            outcome.finished = await deliver(message, doc, platform, reply)
        return outcome

    async def after_processing(self, message: Message, outcome: Outcome) -> None:
        """Withheld speech (opted out, `memory off`) is dropped once answered; what became a
        memory may teach Mnemo something (learned in the background, never in the reply's
        path). Questions, commands and small talk start no learning pass of their own: a pass
        reads only memories, and a later one still reads past them."""
        s = self.services
        if outcome.withheld:
            if outcome.finished:
                await s.store.amend_message(
                    message.event_key, {"text": "", "media_text": None, "media_kind": None, "attachments": []}
                )
            return
        if outcome.remembered:
            s.learner.note(message)

    async def _work(
        self, message: Message, doc: dict[str, Any], platform: Platform, outcome: Outcome
    ) -> Reply | None:
        s = self.services
        command = commands.parse(message.text)
        kind = doc.get("kind", kinds.TOLD)
        if kind == kinds.COMMAND:
            if command is not None and command.name in commands.CONTROL:
                return await commands.run(s, message, platform, command)
            return commands.unknown(command) if command is not None else None

        settings = await s.settings.get(message.conversation_key)
        media_texts, media_error = await self._read_media(message, platform)
        if not message.attachments and doc.get("attachments"):
            # Adopted after a crash: the files are not at hand again, what was read of them is.
            if doc.get("media_text"):
                media_texts = [MediaText(doc.get("media_kind") or "file", doc["media_text"])]
            else:
                media_error = REREAD
        if media_texts:
            await s.store.update_message(
                doc["_id"],
                {"media_text": "\n".join(m.text for m in media_texts), "media_kind": media_texts[0].kind},
            )
        content = memory_text(message.text, media_texts)
        remembered = await self._remember(message, doc, settings, content, media_texts, outcome)

        if not self._addressed(message, settings, command):
            return None
        if media_error:
            return Reply(media_error, is_error=True)
        said = self._question(message, command, media_texts)
        if kind == kinds.TOLD and not kinds.is_question(said, searches=not media_texts):
            # Something told (a statement, a voice note, a photo): acknowledged, not answered.
            if media_texts:
                if not remembered:
                    return Reply(not_remembering(settings.memory == "off"))
                note = Source(1, doc["_id"], message.author_name, message.ts, content, message.link,
                              media_texts[0].kind)
                return Reply(media_acknowledgement(media_texts), [note.footnote()])
            if message.attachments:
                return Reply("I couldn't read that attachment.")
            return await self.answering.acknowledge(message, said, remembered, settings)
        if not said:
            return Reply(EMPTY)
        reasoning = settings.mode == "reasoning" or (command is not None and command.name == "deep")
        # A question never cites itself; a photo asked about ("what does this say?") may.
        itself = None if any(m.kind == "image" for m in media_texts) else doc["_id"]
        return await self.answering.answer(message, said, settings, exclude_id=itself, reasoning=reasoning)

    async def _remember(
        self, message: Message, doc: dict[str, Any], settings: ChannelSettings, content: str,
        media_texts: list[MediaText], outcome: Outcome,
    ) -> bool:
        s = self.services
        user = await s.store.get_user(message.user_key)
        if settings.memory != "on" or bool(user.get("opted_out")):
            # Kept only while answering needs it: never indexed, learned, listed or exported.
            await s.store.update_message(doc["_id"], {"withheld": True})
            outcome.withheld = True
            return False
        if not (content.strip() and kinds.small_talk_reply(content) is None and doc["remember"]):
            return False
        try:
            await s.index.add([memory_item(doc, content, media_texts)])
            await s.store.update_message(doc["_id"], {"remembered": True})
            outcome.remembered = True
            return True
        except MemoryUnavailable as exc:
            # Stored, not yet indexed: `index_pending` has it indexed when Chroma is back.
            log.error("memory index unavailable; %s is stored, indexed later: %s", doc["_id"], exc)
            s.metrics.inc("mnemo_memory_errors_total")
            await s.store.update_message(doc["_id"], {"index_pending": True})
            return False

    def _addressed(self, message: Message, settings: ChannelSettings, command: commands.Command | None) -> bool:
        if message.is_dm:
            return True
        if command is not None and command.name in ("ask", "deep"):
            return True
        if settings.respond_to == "off":
            return False
        if settings.respond_to == "all":
            return True
        return message.mentions_bot or message.replies_to_bot

    def _question(self, message: Message, command: commands.Command | None, media: list[MediaText]) -> str:
        text = command.args if command is not None and command.name in ("ask", "deep") else message.text
        if message.mentions_bot:
            text = _MENTION.sub(" ", text)
        text = " ".join(text.split())
        if not text:
            text = " ".join(m.text for m in media if m.kind in ("voice", "audio")).strip()
        return text

    async def _read_media(self, message: Message, platform: Platform) -> tuple[list[MediaText], str | None]:
        s = self.services
        texts: list[MediaText] = []
        error: str | None = None
        cap = s.config.max_file_bytes
        if platform.limits.max_download_bytes is not None:
            cap = min(cap, platform.limits.max_download_bytes)
        for attachment in message.attachments:
            try:
                texts.append(await s.media.fetch_and_read(attachment, cap))
            except MediaError as exc:
                error = str(exc)
                s.metrics.inc("mnemo_media_errors_total", kind=attachment.kind)
        return texts, error


def media_acknowledgement(media: list[MediaText]) -> str:
    """A voice note or image without a question: say what was heard or read, so the person
    can tell whether it was understood."""
    first = media[0]
    said = shorten(first.text, 160)
    if not said:
        return f"Noted: I'll remember this {first.kind} [1]."
    verb = "Heard" if first.kind in ("voice", "audio") else f"Read in the {first.kind}"
    return f"{verb}: “{said}”. I'll remember it [1]."
