"""A loopback OpenAI-compatible model server that litellm talks to over HTTP.

It answers like a careful model would: it reads the numbered sources in the prompt and cites
the one that best overlaps the question; a statement ("NAME tells you: ...") gets a short
acknowledgement. Tests can script answers, make it fail (outage),
and read every request it received.

Learning requests (the `record_facts` tool, DESIGN.md "Learning") get an OpenAI-format
`tool_calls` answer: scripted (`facts_script`) or derived from the messages by a few
patterns ("I live in X", "I moved to X", "I work at X", "my favourite X is Y"), updating the
matching known fact when the request lists one.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.fakes.server import ServerThread

_SOURCE = re.compile(r"^\[(\d+)\] (.*)$", re.MULTILINE)
_WORD = re.compile(r"\w+")
_STOP = {"the", "a", "an", "is", "was", "what", "when", "who", "did", "does", "do", "my", "me", "you",
         "i", "of", "to", "in", "on", "and", "for", "tell", "about", "your", "it", "that", "asks"}


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


_KNOWN = re.compile(r"^\{(F\w+)\} (.*)$", re.MULTILINE)
_TOLD = re.compile(r"^\[(\d+)\] ([^,\n]+), (\d{4}-\d{2}-\d{2}): (.*)$", re.MULTILINE)
# (pattern over the message, topic, fact template): a topic holds one current fact per person.
_FACT_PATTERNS = [
    (re.compile(r"\bI (?:live|am living|now live) in ([A-Z][\w-]*(?: [A-Z][\w-]*)*)"), "lives in", "{who} lives in {0}"),
    (re.compile(r"\bI (?:moved|have moved|just moved|relocated) to ([A-Z][\w-]*(?: [A-Z][\w-]*)*)"),
     "lives in", "{who} lives in {0}"),
    (re.compile(r"\bI (?:work|am working|now work) (?:at|for) ([A-Z][\w&-]*(?: [A-Z][\w&-]*)*)"), "works at",
     "{who} works at {0}"),
    (re.compile(r"\bI (?:started|got) a new job at ([A-Z][\w&-]*(?: [A-Z][\w&-]*)*)"), "works at",
     "{who} works at {0}"),
    (re.compile(r"\b[Mm]y favou?rite (\w+) is (?:now )?([\w-]+(?: [\w-]+)?)"), "favourite {0}",
     "{who}'s favourite {0} is {1}"),
]


_KNOWN_TOPICS = [
    re.compile(r"^(\S+) (lives) in "),
    re.compile(r"^(\S+) (works) at "),
    re.compile(r"^(\S+)'s favourite (\w+) is "),
]


def learning_request(body: dict[str, Any]) -> bool:
    return any((t.get("function") or {}).get("name") == "record_facts" for t in body.get("tools") or [])


def derived_facts(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """What a careful learner would record from the `[n] author, date: text` lines, updating a
    listed `{F<id>} text` fact on the same topic about the same person."""
    user = str(messages[-1].get("content") or "") if messages else ""
    known = {fid: text for fid, text in _KNOWN.findall(user)}
    ops: dict[tuple[str, str], dict[str, Any]] = {}
    current: dict[tuple[str, str], str] = {}  # (person, topic) -> known fact id
    for fid, text in known.items():
        for pattern in _KNOWN_TOPICS:
            match = pattern.match(text)
            if match:
                topic = match.group(2) if match.lastindex == 2 else ""
                name = {"lives": "lives in", "works": "works at"}.get(topic, f"favourite {topic}")
                current[(match.group(1).lower(), name)] = fid
    for number, who, _date, text in _TOLD.findall(user):
        for pattern, topic, template in _FACT_PATTERNS:
            for match in pattern.finditer(text):
                groups = [g.rstrip(".,!") for g in match.groups()]
                fact = template.format(*groups, who=who)
                key = (who.lower(), topic.format(*groups))
                op: dict[str, Any] = {"op": "add", "text": fact, "about": who, "sources": [int(number)]}
                if key in current:
                    op.update(op="update", id=current[key])
                ops[key] = op  # within one batch, the last word on a topic wins
    return {"facts": list(ops.values())}


def grounded_answer(messages: list[dict[str, Any]]) -> str:
    """Pick the source sharing most words with the question; cite it."""
    user = messages[-1]["content"] if messages else ""
    if isinstance(user, list):
        user = " ".join(part.get("text", "") for part in user if isinstance(part, dict))
    question = user.rsplit(" asks: ", 1)[-1]
    if " tells you: " in question:  # a statement to acknowledge, not a question
        return "Noted, thanks."
    best: tuple[int, str, str] | None = None
    for number, line in _SOURCE.findall(user):
        overlap = len(_words(question) & _words(line))
        if overlap and (best is None or overlap > best[0]):
            best = (overlap, number, line)
    if best is None:
        return "I don't remember anything about that."
    content = best[2].split(": ", 1)[-1]
    return f"From what I remember: {content} [{best[1]}]"


class FakeLLM:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail = False  # answer 500s (an outage)
        self.script: list[str] = []  # next answers, in order, before falling back to grounded answers
        # Learning: next record_facts arguments (a dict, or a raw string: a malformed answer),
        # before falling back to facts derived from the messages; `learning_fail` answers 500s.
        self.facts_script: list[Any] = []
        self.facts_responder: Callable[[list[dict[str, Any]]], Any] = derived_facts
        self.learning_fail = False
        self.responder: Callable[[list[dict[str, Any]]], str] = grounded_answer
        self.delay_s = 0.0
        # Streaming (`stream: true` requests are answered as server-sent events, like OpenAI):
        self.stream_pieces = 12  # the answer is sent in about this many chunks...
        self.stream_chunk_delay_s = 0.0  # ...with this pause before each one
        self.stream_fail_after: int | None = None  # break the stream after this many chunks
        self.hang = False  # accept the request and never answer (a hung provider)
        self.reject_key = False  # 401 invalid_api_key, as OpenAI answers a wrong key
        self.unknown_model = False  # 404 model_not_found
        # A finite context window: a longer prompt is refused with 400 context_length_exceeded.
        self.max_prompt_chars: int | None = None
        self.transcript = "this is a transcript"
        # Embedding requests answered before the rest are held (None: all answered): a bulk
        # import paused mid-way, at a batch boundary, until it is set back to None.
        self.embeddings_before_hold: int | None = None
        self.embedding_requests = 0  # received so far (held ones included)
        self._lock = threading.Lock()
        self._thread = ServerThread(self._app)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    @property
    def api_base(self) -> str:
        return f"{self._thread.url}/v1"

    def env(self, model: str = "openai/fake-model") -> dict[str, str]:
        return {"MNEMO_MODEL": model, "MNEMO_LLM_API_BASE": self.api_base, "MNEMO_LLM_API_KEY": "sk-test"}

    def chat_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r.get("_path", "").endswith("chat/completions")]

    def learning_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.chat_requests() if learning_request(r)]

    def answer_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.chat_requests() if not learning_request(r)]

    def all_prompt_text(self) -> str:
        return "\n".join(json.dumps(r.get("messages", []), ensure_ascii=False) for r in self.chat_requests())

    # -- HTTP ---------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        for prefix in ("", "/v1"):
            app.router.add_post(f"{prefix}/chat/completions", self._chat)
            app.router.add_post(f"{prefix}/embeddings", self._embeddings)
            app.router.add_post(f"{prefix}/audio/transcriptions", self._transcribe)
        return app

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["_path"] = request.path
        if learning_request(body):
            return await self._learn(body)
        with self._lock:
            self.requests.append(body)
            fail = self.fail
            scripted = self.script.pop(0) if self.script else None
        if self.delay_s:
            import asyncio

            await asyncio.sleep(self.delay_s)
        while self.hang:
            import asyncio

            await asyncio.sleep(0.1)
        if self.reject_key:
            return web.json_response({"error": {"message": "Incorrect API key provided: sk-te**st.",
                                                "type": "invalid_request_error", "code": "invalid_api_key"}}, status=401)
        if self.unknown_model:
            return web.json_response({"error": {"message": f"The model `{body.get('model')}` does not exist",
                                                "type": "invalid_request_error", "code": "model_not_found"}},
                                     status=404)
        prompt_chars = sum(len(str(m.get("content") or "")) for m in body.get("messages", []))
        if self.max_prompt_chars is not None and prompt_chars > self.max_prompt_chars:
            return web.json_response({"error": {
                "message": f"This model's maximum context length is {self.max_prompt_chars} characters; "
                           f"your messages resulted in {prompt_chars}.",
                "type": "invalid_request_error", "code": "context_length_exceeded"}}, status=400)
        if fail:
            return web.json_response({"error": {"message": "upstream overloaded", "type": "server_error"}}, status=500)
        content = scripted if scripted is not None else self.responder(body.get("messages", []))
        if body.get("stream"):
            return await self._stream(request, body, content)
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake-model"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }
        )

    async def _stream(self, request: web.Request, body: dict[str, Any], content: str) -> web.StreamResponse:
        """`content` as chat.completion.chunk events, split at word boundaries."""
        import asyncio

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        words = re.findall(r"\S+\s*", content) or [content]
        size = max(1, -(-len(words) // max(1, self.stream_pieces)))
        pieces = ["".join(words[i:i + size]) for i in range(0, len(words), size)]
        base = {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model", "fake-model")}

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            event = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())

        for number, piece in enumerate(pieces):
            if self.stream_fail_after is not None and number >= self.stream_fail_after:
                # A provider failing midway: an error event, then the connection drops.
                await response.write(b'data: {"error": {"message": "upstream died", "type": "server_error"}}\n\n')
                request.transport.close() if request.transport else None
                return response
            if self.stream_chunk_delay_s:
                await asyncio.sleep(self.stream_chunk_delay_s)
            await send({"role": "assistant", "content": piece} if number == 0 else {"content": piece})
        await send({}, "stop")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _learn(self, body: dict[str, Any]) -> web.Response:
        with self._lock:
            self.requests.append(body)
            fail = self.fail or self.learning_fail
            scripted = self.facts_script.pop(0) if self.facts_script else None
        if fail:
            return web.json_response({"error": {"message": "upstream overloaded", "type": "server_error"}}, status=500)
        arguments = scripted if scripted is not None else self.facts_responder(body.get("messages", []))
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        call = {"id": f"call_{len(self.requests)}", "type": "function",
                "function": {"name": "record_facts", "arguments": arguments}}
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake-model"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                     "finish_reason": "tool_calls"}
                ],
                "usage": {"prompt_tokens": len(json.dumps(body.get("messages", []))) // 4,
                          "completion_tokens": len(arguments) // 4,
                          "total_tokens": (len(json.dumps(body.get("messages", []))) + len(arguments)) // 4},
            }
        )

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["_path"] = request.path
        with self._lock:
            self.requests.append(body)
            self.embedding_requests += 1
            served = self.embedding_requests
        import asyncio

        while self.embeddings_before_hold is not None and served > self.embeddings_before_hold:
            await asyncio.sleep(0.05)
        inputs = body.get("input") or []
        if isinstance(inputs, str):
            inputs = [inputs]
        data = []
        for i, text in enumerate(inputs):
            vector = [0.0] * 64
            for word in _words(str(text)):
                vector[hash(word) % 64] += 1.0
            data.append({"object": "embedding", "index": i, "embedding": vector})
        return web.json_response({"object": "list", "data": data, "model": body.get("model"),
                                  "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    async def _transcribe(self, request: web.Request) -> web.Response:
        reader = await request.post()
        upload = reader.get("file")
        received: dict[str, Any] = {"_path": request.path, "model": reader.get("model")}
        if isinstance(upload, web.FileField):  # what reached us: the sender's file, byte for byte
            received.update(filename=upload.filename, file_bytes=upload.file.read())
        with self._lock:
            self.requests.append(received)
        return web.json_response({"text": self.transcript})
