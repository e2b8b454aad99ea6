"""A loopback OpenAI-compatible model server that litellm talks to over HTTP.

It answers like a careful model would: it reads the numbered sources in the prompt and cites
the one that best overlaps the question; a statement ("NAME tells you: ...") gets a short
acknowledgement. Tests can script answers, make it fail (outage),
and read every request it received.
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
        self.responder: Callable[[list[dict[str, Any]]], str] = grounded_answer
        self.delay_s = 0.0
        # Streaming (`stream: true` requests are answered as server-sent events, like OpenAI):
        self.stream_pieces = 12  # the answer is sent in about this many chunks...
        self.stream_chunk_delay_s = 0.0  # ...with this pause before each one
        self.stream_fail_after: int | None = None  # break the stream after this many chunks
        self.hang = False  # accept the request and never answer (a hung provider)
        self.reject_key = False  # 401 invalid_api_key, as OpenAI answers a wrong key
        self.unknown_model = False  # 404 model_not_found
        self.transcript = "this is a transcript"
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

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["_path"] = request.path
        with self._lock:
            self.requests.append(body)
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
