"""An OpenAI-compatible HTTP server over one `EngineLoop` (FastAPI + uvicorn).

Endpoints: POST /v1/completions and /v1/chat/completions (the model's chat template), streaming
(server-sent events, ending with `data: [DONE]`) or not; GET /v1/models, /health and /metrics
(Prometheus text format). Sampling: `temperature` (OpenAI's default 1.0), `top_p`, `top_k`
(0: off), `max_tokens` (chat: also `max_completion_tokens`), `stop` (a string or up to 4), `seed`.
`usage.speculative` reports the request's speculation: steps, τ, acceptance per depth, shapes.

Errors are OpenAI-shaped (`{"error": {"message", "type", "param", "code"}}`): a body that is
not JSON, a field of the wrong type or out of range, an unsupported value (`n` > 1), a prompt
that with its budget exceeds the model's context all answer 400 with the reason; a full queue
answers 429, a server shutting down 503. A client that disconnects cancels its request at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from redrafter_rs._common import tau_of
from redrafter_rs.engine.sampling import SamplingParams
from redrafter_rs.errors import RedrafterError
from redrafter_rs.serving.loop import Closed, EngineLoop, Handle, Overloaded

MAX_STOP = 4  # OpenAI's limit on stop sequences
# Request fields this server knows (OpenAI's, plus vLLM's `top_k`); others are refused, as
# OpenAI's API does ("unrecognized request argument"), instead of being silently ignored.
COMMON_FIELDS = {
    "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n",
    "stream", "stream_options", "stop", "seed", "user", "logprobs", "presence_penalty",
    "frequency_penalty", "logit_bias",
}  # fmt: skip
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "echo", "suffix", "best_of"}
CHAT_FIELDS = COMMON_FIELDS | {
    "messages", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls",
    "response_format", "store", "metadata", "service_tier",
}  # fmt: skip


class BadRequest(RedrafterError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# ---- request validation (hand-written: OpenAI's field rules, 400 with the field's name) --------
def _field(body: dict, name: str, kinds: tuple, default=None, *, low=None, high=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds:
        raise BadRequest(f"'{name}' must be {_kind_names(kinds)}, got a boolean", name)
    if not isinstance(value, kinds):
        raise BadRequest(f"'{name}' must be {_kind_names(kinds)}, got {type(value).__name__}", name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise BadRequest(f"'{name}' must be a finite number, got {value}", name)
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise BadRequest(f"'{name}' must be in {span}, got {value}", name)
    return value


def _kind_names(kinds: tuple) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean",
             list: "a list", dict: "an object"}  # fmt: skip
    return " or ".join(names.get(k, k.__name__) for k in kinds if not (k is int and float in kinds))


def parse_common(
    body: dict, max_tokens_default: int, known: set[str] = COMPLETION_FIELDS
) -> tuple[SamplingParams, int, list[str], bool]:
    """(sampling, max_tokens, stop strings, stream) from an OpenAI request body."""
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"unrecognized request argument supplied: {unknown[0]}", unknown[0])
    if body.get("response_format") not in (None, {"type": "text"}):
        raise BadRequest("'response_format' other than text is not supported", "response_format")
    if body.get("tool_choice") not in (None, "none"):
        raise BadRequest("tool calls are not supported by this server", "tool_choice")
    n = _field(body, "n", (int,), 1, low=1)
    if n != 1:
        raise BadRequest("only n = 1 is supported (one choice per request)", "n")
    if _field(body, "best_of", (int,), 1, low=1) != 1:
        raise BadRequest("best_of > 1 is not supported", "best_of")
    for unsupported in ("logprobs", "top_logprobs", "echo", "suffix", "logit_bias", "tools"):
        value = body.get(unsupported)
        if value not in (None, False, 0, {}, []):
            raise BadRequest(f"'{unsupported}' is not supported by this server", unsupported)
    for penalty in ("frequency_penalty", "presence_penalty"):
        if _field(body, penalty, (int, float), 0.0, low=-2.0, high=2.0) != 0:
            raise BadRequest(
                f"'{penalty}' is not supported: it depends on each tree node's own path, and "
                "redrafter-rs does not approximate (outputs stay exact)",
                penalty,
            )
    temperature = float(_field(body, "temperature", (int, float), 1.0, low=0.0, high=2.0))
    top_p = float(_field(body, "top_p", (int, float), 1.0, low=0.0, high=1.0))
    if top_p == 0.0:
        raise BadRequest("'top_p' must be in (0, 1], got 0", "top_p")
    top_k = _field(body, "top_k", (int,), 0, low=-1)
    seed = _field(body, "seed", (int,), None)
    max_tokens = _field(body, "max_tokens", (int,), None, low=1)
    if max_tokens is None:
        max_tokens = _field(body, "max_completion_tokens", (int,), max_tokens_default, low=1)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("'stop' must be a string or a list of strings", "stop")
    if len(stop) > MAX_STOP or any(s == "" for s in stop):
        raise BadRequest(f"'stop' takes 1 to {MAX_STOP} non-empty strings", "stop")
    stream = _field(body, "stream", (bool,), False)
    sampling = SamplingParams(
        temperature=temperature,
        top_p=top_p,
        top_k=max(int(top_k), 0),
        seed=seed if temperature > 0 else None,
    )
    return sampling, int(max_tokens), stop, bool(stream)


class StopText:
    """Incremental detokenisation with stop strings: `push(tokens)` returns the text that is
    safe to send (text that might still become a stop string is held back) and whether a stop
    string ended the output."""

    def __init__(self, tokenizer, stop: list[str]) -> None:
        self.tok, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already sent
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.stopped = False
        self.text = ""

    def push(self, tokens: list[int], final: bool = False) -> str:
        if self.stopped:
            return ""
        self.ids.extend(tokens)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and not final:  # an unfinished UTF-8 sequence: wait
            return ""
        cut = min((i for i in (text.find(s, max(self.sent - len(s), 0)) for s in self.stop)
                   if i >= 0), default=-1)  # fmt: skip
        if cut >= 0:
            self.stopped = True
            text = text[:cut]
            end = len(text)
        else:
            end = len(text) if final else max(len(text) - self.hold, self.sent)
        self.text = text
        out = text[self.sent : end]
        self.sent = max(self.sent, end)
        return out


def _finish_reason(text: StopText, req) -> str:
    """OpenAI's finish reason: "stop" (a stop string or end of sequence), "length" (the budget),
    "cancelled" (stopped before it ran)."""
    if text.stopped or (req is not None and req.finish_reason == "eos"):
        return "stop"
    if req is None or req.finish_reason == "cancelled":
        return "cancelled"
    return "length"


def speculative_usage(req) -> dict:
    st = req.stats
    return {
        "steps": st.steps,
        "tau": round(st.tau, 4),
        "acceptance_per_depth": [round(a, 4) for a in st.acceptance_per_depth],
        "shapes": dict(st.shapes),
    }


class Server:
    """The app's state: the engine loop, the tokenizer and the limits."""

    def __init__(
        self,
        loop: EngineLoop,
        tokenizer,
        model_name: str,
        context_limit: int | None,
        max_tokens_default: int = 256,
        grace_s: float = 30.0,
    ) -> None:
        self.loop, self.tok, self.model_name = loop, tokenizer, model_name
        self.grace_s = grace_s  # shutdown: in-flight requests get this long to finish
        self.context_limit = context_limit
        self.max_tokens_default = max_tokens_default
        self.started = int(time.time())

    # ---- prompts -------------------------------------------------------------------------
    def completion_prompt(self, body: dict) -> list[int]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise BadRequest("'prompt' is empty", "prompt")
            return list(self.tok(prompt).input_ids)
        if (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            return prompt  # token ids; range-checked by the engine
        raise BadRequest("'prompt' must be a non-empty string or a list of token ids", "prompt")

    def chat_prompt(self, body: dict) -> list[int]:
        messages = body.get("messages")
        if not (isinstance(messages, list) and messages):
            raise BadRequest("'messages' must be a non-empty list", "messages")
        clean = []
        for i, m in enumerate(messages):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)):
                raise BadRequest(f"messages[{i}] must be an object with a 'role'", "messages")
            content = m.get("content")
            if isinstance(content, list):  # OpenAI's content parts: text parts only
                if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                    raise BadRequest(f"messages[{i}]: only text content is supported", "messages")
                content = "".join(str(p.get("text", "")) for p in content)
            if not isinstance(content, str):
                raise BadRequest(f"messages[{i}].content must be a string", "messages")
            clean.append({"role": m["role"], "content": content})
        if getattr(self.tok, "chat_template", None) is None:
            raise BadRequest("this model has no chat template: use /v1/completions", "messages")
        try:
            ids = self.tok.apply_chat_template(clean, add_generation_prompt=True, tokenize=True)
        except Exception as e:  # a template that rejects the roles, e.g. no system role
            raise BadRequest(f"the chat template rejected the messages: {e}", "messages") from e
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def check_length(self, prompt: list[int], max_tokens: int) -> None:
        limit = self.context_limit
        if limit and len(prompt) + max_tokens > limit:
            raise BadRequest(
                f"the prompt ({len(prompt)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                f"model's context of {limit} tokens",
                "max_tokens",
            )

    # ---- one request ---------------------------------------------------------------------
    async def run(self, prompt, sampling, max_tokens, stop) -> AsyncIterator[tuple]:
        """Yields ("text", str) pieces, then ("done", finish_reason, request|None)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_tokens(tokens):
            loop.call_soon_threadsafe(queue.put_nowait, ("tokens", tokens))

        def on_done(req, error):
            loop.call_soon_threadsafe(queue.put_nowait, ("done", req, error))

        handle = Handle(on_tokens, on_done, prompt, sampling, max_tokens)
        rid = self.loop.submit(handle)
        text = StopText(self.tok, stop)
        finished = False
        try:
            while True:
                item = await queue.get()
                if item[0] == "tokens":
                    piece = text.push(item[1])
                    if piece:
                        yield ("text", piece)
                    if text.stopped:
                        self.loop.cancel(rid)
                    continue
                _, req, error = item
                finished = True
                if isinstance(error, RedrafterError):
                    raise BadRequest(str(error))
                if error is not None:
                    raise RuntimeError(str(error))
                piece = text.push([], final=True)
                if piece:
                    yield ("text", piece)
                yield ("done", _finish_reason(text, req), req)
                return
        finally:
            if not finished:  # the client went away (or the task was cancelled)
                self.loop.cancel(rid)

    def usage(self, prompt: list[int], req) -> dict:
        completion = len(req.tokens) if req is not None else 0
        out = {
            "prompt_tokens": len(prompt),
            "completion_tokens": completion,
            "total_tokens": len(prompt) + completion,
        }
        if req is not None:
            out["speculative"] = speculative_usage(req)
        return out


def create_app(server: Server):
    """The FastAPI application for `server`."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn stopped taking connections and let open ones finish (its own grace period);
        # whatever still runs in the engine gets `grace_s`, then is cancelled
        await asyncio.get_running_loop().run_in_executor(None, server.loop.close, server.grace_s)

    app = FastAPI(title="redrafter-rs", version=_version(), lifespan=lifespan)
    metrics = _Metrics(server)

    def error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
        body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
        return JSONResponse(body, status_code=status)

    async def read_body(request: Request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    async def handle(request: Request, chat: bool):
        try:
            body = await read_body(request)
            known = CHAT_FIELDS if chat else COMPLETION_FIELDS
            sampling, max_tokens, stop, stream = parse_common(
                body, server.max_tokens_default, known
            )
            prompt = server.chat_prompt(body) if chat else server.completion_prompt(body)
            server.check_length(prompt, max_tokens)
            gen = server.run(prompt, sampling, max_tokens, stop)
            first = await gen.__anext__()  # submit now: overload and bad prompts fail here
        except BadRequest as e:
            return error(400, str(e), "invalid_request_error", e.param)
        except Overloaded as e:
            return error(429, str(e), "rate_limit_error")
        except Closed as e:
            return error(503, str(e), "server_shutting_down")
        except RedrafterError as e:
            return error(400, str(e), "invalid_request_error")
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = _sse(server, gen, first, rid, created, chat, prompt, include_usage, request)
            return StreamingResponse(events, media_type="text/event-stream")
        text, reason, req = [], None, None
        try:
            item = first
            while True:
                if item[0] == "text":
                    text.append(item[1])
                else:
                    _, reason, req = item
                    break
                item = await _next_or_disconnect(gen, request)
        except BadRequest as e:
            return error(400, str(e), "invalid_request_error", e.param)
        except RuntimeError as e:
            return error(500, str(e), "server_error")
        except _Disconnected:
            return error(499, "client closed the request", "cancelled")
        content = "".join(text)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": content},
                      "finish_reason": reason, "logprobs": None}  # fmt: skip
        else:
            choice = {"index": 0, "text": content, "finish_reason": reason, "logprobs": None}
        return {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": server.model_name,
            "choices": [choice],
            "usage": server.usage(prompt, req),
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": server.model_name, "object": "model", "created": server.started,
                      "owned_by": "redrafter-rs"}],
        }  # fmt: skip

    @app.get("/health")
    async def health():
        loop = server.loop
        body = {"status": "ok", "active": loop.batch_size, "queued": loop.queue_depth}
        if not loop.accepting:
            return JSONResponse({**body, "status": "shutting down"}, status_code=503)
        return body

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    return app


class _Disconnected(Exception):
    pass


async def _next_or_disconnect(gen, request):
    """The next item of `gen`, or `_Disconnected` once the client has gone (checked twice a
    second; the request is cancelled by `gen`'s cleanup)."""
    task = asyncio.ensure_future(gen.__anext__())
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            await gen.aclose()
            raise _Disconnected


async def _sse(server, gen, first, rid, created, chat, prompt, include_usage, request):
    """Server-sent events of one streaming request (OpenAI's chunk objects, then [DONE])."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, reason: str | None, first_chunk=False) -> str:
        if chat:
            delta = (
                {"role": "assistant", "content": text or ""}
                if first_chunk
                else ({"content": text} if text else {})
            )
            choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
        body = {"id": rid, "object": kind, "created": created, "model": server.model_name,
                "choices": [choice]}  # fmt: skip
        if include_usage:
            body["usage"] = None
        return f"data: {json.dumps(body)}\n\n"

    try:
        item, sent_first = first, False
        while True:
            if item[0] == "text":
                yield chunk(item[1], None, first_chunk=chat and not sent_first)
                sent_first = True
            else:
                _, reason, req = item
                if chat and not sent_first:
                    yield chunk("", None, first_chunk=True)
                yield chunk(None, reason)
                if include_usage:
                    body = {"id": rid, "object": kind, "created": created,
                            "model": server.model_name, "choices": [],
                            "usage": server.usage(prompt, req)}  # fmt: skip
                    yield f"data: {json.dumps(body)}\n\n"
                yield "data: [DONE]\n\n"
                return
            item = await gen.__anext__()
    except (BadRequest, RuntimeError) as e:
        body = {"error": {"message": str(e), "type": "server_error", "param": None, "code": 500}}
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        await gen.aclose()  # cancels the engine request if the client went away


class _Metrics:
    """Prometheus metrics of one server (its own registry)."""

    def __init__(self, server: Server) -> None:
        from prometheus_client import CollectorRegistry, Gauge
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        self.server = server
        self.content_type = CONTENT_TYPE_LATEST
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Gauge(
            "redrafter_requests", "finished requests by outcome (eos, length, cancelled, "
            "rejected, invalid, error)", ["outcome"], registry=reg,
        )  # fmt: skip
        self.tokens = Gauge("redrafter_generated_tokens", "tokens generated", registry=reg)
        self.tps = Gauge("redrafter_tokens_per_second", "tokens/s, last 10 s", registry=reg)
        self.tau = Gauge("redrafter_tau", "tokens per verification step", registry=reg)
        self.depth = Gauge(
            "redrafter_acceptance", "share of row-steps that accepted a draft token at depth",
            ["depth"], registry=reg,
        )  # fmt: skip
        self.queue = Gauge("redrafter_queue_depth", "requests waiting for a slot", registry=reg)
        self.batch = Gauge("redrafter_batch_size", "requests being decoded", registry=reg)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        loop = self.server.loop
        st = loop.stats
        for outcome, n in st.requests.items():
            self.requests.labels(outcome).set(n)
        self.tokens.set(st.tokens)
        self.tps.set(loop.tokens_per_s())
        self.tau.set(tau_of(st.accepted, st.verify_steps))
        depths = max(len(st.accepted_at_depth), loop.gen.config.beam_length - 1)
        for d in range(1, depths + 1):
            n = st.accepted_at_depth[d - 1] if d <= len(st.accepted_at_depth) else 0
            self.depth.labels(str(d)).set(n / max(st.verify_steps, 1))
        self.queue.set(loop.queue_depth)
        self.batch.set(loop.batch_size)
        return generate_latest(self.registry)


def _version() -> str:
    from redrafter_rs import __version__

    return __version__
