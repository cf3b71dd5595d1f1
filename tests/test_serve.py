"""`redrafter serve` with real clients: the official `openai` package (and raw HTTP for what it
will not send) against a uvicorn server started here on a free loopback port, over a tiny random
Llama with a real (character-level) Hugging Face tokenizer and chat template; the default model
once. Greedy outputs must equal `model.generate` for each request alone."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
import torch

import redrafter_rs as rr
from helpers import char_tokenizer, tiny_llama
from redrafter_rs.serving.cli import running_server

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

V = 96


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_llama(seed=21, vocab_size=V)
    model.generation_config.pad_token_id = 0
    tok = char_tokenizer()
    drafter_dir = tmp_path_factory.mktemp("drafter")
    torch.manual_seed(0)
    rr.RecurrentDrafter.for_target(model).save_pretrained(drafter_dir)
    return model, tok, str(drafter_dir)


@pytest.fixture(scope="module")
def server(tiny):
    model, tok, drafter = tiny
    argv = ["--drafter", drafter, "--no-fast", "--max-batch", "8", "--num-speculative-tokens", "3"]
    with running_server(argv, model, tok) as running:
        yield running


def greedy_alone(model, ids: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n)
    return out[0, len(ids) :].tolist()


def expected_text(model, tok, ids: list[int], n: int) -> tuple[str, str]:
    new = greedy_alone(model, ids, n)
    reason = "stop" if new and new[-1] == 1 else "length"
    return tok.decode(new, skip_special_tokens=True), reason


def client(url: str):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


# ---- completions and chat ------------------------------------------------------------------
def test_completion_greedy_equals_generate_streaming_or_not(tiny, server):
    model, tok, _ = tiny
    url, _, _ = server
    c = client(url)
    prompt = "The cat sat on"
    text, reason = expected_text(model, tok, tok(prompt).input_ids, 40)
    r = c.completions.create(model="m", prompt=prompt, max_tokens=40, temperature=0)
    assert r.choices[0].text == text and r.choices[0].finish_reason == reason
    assert r.usage.prompt_tokens == len(tok(prompt).input_ids)
    spec = r.usage.model_extra["speculative"]
    assert spec["steps"] >= 1 and spec["tau"] >= 1.0 and len(spec["acceptance_per_depth"]) == 3
    stream = c.completions.create(model="m", prompt=prompt, max_tokens=40, temperature=0,
                                  stream=True)  # fmt: skip
    chunks = list(stream)
    assert "".join(ch.choices[0].text for ch in chunks) == text
    assert chunks[-1].choices[0].finish_reason == reason
    assert all(ch.choices[0].finish_reason is None for ch in chunks[:-1])


def test_chat_uses_the_template_streaming_or_not(tiny, server):
    model, tok, _ = tiny
    url, _, _ = server
    c = client(url)
    messages = [{"role": "user", "content": "Hi there"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    text, reason = expected_text(model, tok, ids, 30)
    r = c.chat.completions.create(model="m", messages=messages, max_tokens=30, temperature=0)
    assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == reason
    stream = c.chat.completions.create(model="m", messages=messages, max_tokens=30,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_stop_strings_and_seeds(tiny, server):
    model, tok, _ = tiny
    url, _, _ = server
    c = client(url)
    prompt = "Once upon a time"
    full, _ = expected_text(model, tok, tok(prompt).input_ids, 40)
    stop = full[5:7]  # a string the greedy output contains
    r = c.completions.create(model="m", prompt=prompt, max_tokens=40, temperature=0, stop=[stop])
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    a = c.completions.create(model="m", prompt=prompt, max_tokens=20, temperature=1.0, seed=5)
    b = c.completions.create(model="m", prompt=prompt, max_tokens=20, temperature=1.0, seed=5,
                             stream=True)  # fmt: skip
    assert a.choices[0].text == "".join(ch.choices[0].text for ch in b)  # a seed pins it


def test_32_concurrent_streams_with_mixed_settings(tiny, server):
    """Greedy requests (half of them) equal model.generate alone, whatever shares the batch."""
    model, tok, _ = tiny
    url, _, _ = server
    words = ["red fox", "blue sky", "a dog", "the sea", "green", "old man", "we go", "so far"]
    jobs = []
    for i in range(32):
        prompt = f"{words[i % 8]} {i}"
        settings = {"temperature": 0} if i % 2 == 0 else {
            "temperature": [0.7, 1.0, 1.3][i % 3], "top_p": [1.0, 0.9][i % 2 == 1 and i % 4 == 1],
            **({"seed": i} if i % 3 == 0 else {}),
        }  # fmt: skip
        jobs.append((prompt, 12 + i % 20, settings))

    async def one(ac, prompt, n, settings):
        stream = await ac.completions.create(model="m", prompt=prompt, max_tokens=n, stream=True,
                                             **settings)  # fmt: skip
        text, reason = "", None
        async for ch in stream:
            text += ch.choices[0].text
            reason = ch.choices[0].finish_reason or reason
        return text, reason

    async def main():
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as ac:
            return await asyncio.gather(*(one(ac, *job) for job in jobs))

    results = asyncio.run(main())
    for (prompt, n, settings), (text, reason) in zip(jobs, results, strict=True):
        assert reason in ("stop", "length")
        if settings["temperature"] == 0:
            assert (text, reason) == expected_text(model, tok, tok(prompt).input_ids, n), prompt


# ---- serving behaviour -----------------------------------------------------------------------
def test_a_client_that_goes_away_cancels_its_request(tiny, server):
    url, srv, _ = server
    before = srv.loop.stats.requests["cancelled"]
    with httpx.stream("POST", url + "/v1/completions", json={
        "prompt": "Tell me a long story", "max_tokens": 200, "temperature": 0.8, "stream": True,
    }, timeout=30) as r:  # fmt: skip
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    # the connection is closed: the request leaves the batch at once
    for _ in range(200):
        if srv.loop.stats.requests["cancelled"] > before and srv.loop.batch_size == 0:
            break
        time.sleep(0.05)
    assert srv.loop.stats.requests["cancelled"] == before + 1
    assert srv.loop.batch_size == 0


def test_overload_answers_429_with_a_message(tiny):
    model, tok, drafter = tiny
    argv = ["--drafter", drafter, "--no-fast", "--max-batch", "1", "--max-queue", "1"]
    with running_server(argv, model, tok) as (url, _, _):
        body = {"prompt": "busy busy", "max_tokens": 60, "temperature": 0.9}

        async def main():
            async with httpx.AsyncClient(timeout=60) as ac:
                return await asyncio.gather(
                    *(ac.post(url + "/v1/completions", json=body) for _ in range(6))
                )

        codes = [r.status_code for r in asyncio.run(main())]
        assert 200 in codes and 429 in codes and set(codes) <= {200, 429}
        rejected = next(r for r in asyncio.run(main()) if r.status_code == 429)
        assert "at capacity" in rejected.json()["error"]["message"]
        with pytest.raises(openai.RateLimitError):  # what the official client raises
            c = client(url)
            with ThreadPool(6) as pool:
                pool.map(lambda _: c.completions.create(model="m", prompt="busy", max_tokens=60,
                                                        temperature=0.9), range(6))  # fmt: skip


class ThreadPool:
    def __init__(self, n: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)

    def map(self, fn, items) -> list:
        return [f.result() for f in [self.pool.submit(fn, i) for i in items]]


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", b"{not json", None),
        ("/v1/completions", b"[1, 2]", None),
        ("/v1/completions", {"prompt": "x", "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"prompt": "x", "temperature": 3.5}, "temperature"),
        ("/v1/completions", {"prompt": "x", "top_p": 0}, "top_p"),
        ("/v1/completions", {"prompt": "x", "max_tokens": -3}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 10**6}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "n": 2}, "n"),
        ("/v1/completions", {"prompt": "x", "stop": [1, 2]}, "stop"),
        ("/v1/completions", {"prompt": "x", "seed": "abc"}, "seed"),
        ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream"),
        ("/v1/completions", {"prompt": "x", "frequency_penalty": 1.0}, "frequency_penalty"),
        ("/v1/completions", {"prompt": "x", "colour": [1]}, "colour"),
        ("/v1/completions", {"prompt": 5}, "prompt"),
        ("/v1/completions", {"prompt": [3, 4, 500], "max_tokens": 8}, None),
        ("/v1/chat/completions", {"messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"messages": [{"content": "no role"}]}, "messages"),
    ],
)
def test_malformed_requests_get_400_with_a_message(server, path, body, param):
    url, _, _ = server
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(url + path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"
    assert err["param"] == param


def test_models_health_and_metrics(server):
    url, _, _ = server
    c = client(url)
    assert [m.id for m in c.models.list().data] == ["default"]
    assert httpx.get(url + "/health").json()["status"] == "ok"
    c.completions.create(model="m", prompt="metrics", max_tokens=8, temperature=0)
    text = httpx.get(url + "/metrics").text
    for name in ("redrafter_tau", "redrafter_generated_tokens", "redrafter_queue_depth",
                 "redrafter_batch_size", "redrafter_tokens_per_second",
                 'redrafter_acceptance{depth="1"}', 'redrafter_requests{outcome='):  # fmt: skip
        assert name in text, name
    tau = float(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("redrafter_tau")))
    assert tau >= 1.0


def test_graceful_shutdown_finishes_in_flight_requests(tiny):
    model, tok, drafter = tiny
    with running_server(["--drafter", drafter, "--no-fast"], model, tok) as (url, srv, web):
        got = {}

        def run():
            with httpx.stream("POST", url + "/v1/completions", json={
                "prompt": "keep going", "max_tokens": 80, "temperature": 0, "stream": True,
            }, timeout=60) as r:  # fmt: skip
                got["lines"] = [ln for ln in r.iter_lines() if ln]

        t = threading.Thread(target=run)
        t.start()
        while srv.loop.batch_size == 0 and t.is_alive():
            time.sleep(0.01)
        web.should_exit = True  # what SIGTERM does
        t.join(timeout=60)
        assert got["lines"][-1] == "data: [DONE]"
        last = json.loads(got["lines"][-2][len("data: ") :])
        assert last["choices"][0]["finish_reason"] in ("stop", "length")
        for _ in range(200):
            if srv.loop._stopped:
                break
            time.sleep(0.05)
        assert srv.loop._stopped  # the engine thread was stopped cleanly
        with pytest.raises(rr.RedrafterError, match="shutting down"):
            srv.loop.submit(None)


@pytest.mark.slow
def test_soak_300_requests_keeps_memory_flat(tiny, server):
    url, srv, _ = server

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    async def wave(k: int):
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as ac:
            tasks = [ac.completions.create(model="m", prompt=f"soak {k} {i}",
                                           max_tokens=6 + i % 10, temperature=(i % 3) * 0.5,
                                           stream=i % 2 == 0)
                     for i in range(50)]  # fmt: skip
            out = await asyncio.gather(*tasks)
            for o in out:  # drain the streams
                if not hasattr(o, "choices"):
                    async for _ in o:
                        pass

    asyncio.run(wave(0))
    base = rss_mb()
    for k in range(1, 6):
        asyncio.run(wave(k))
    assert rss_mb() - base < 64, (base, rss_mb())
    assert srv.loop.batch_size == 0 and srv.loop.queue_depth == 0


@pytest.mark.slow
def test_the_default_model_serves_chat_equal_to_generate(smollm):
    model, tok = smollm
    argv = ["--no-fast", "--max-batch", "4", "--no-adaptive"]  # a fixed 4x4 tree + retrieval
    with running_server(argv, model, tok) as (url, _, _):
        c = client(url)
        messages = [{"role": "user", "content": "Name three colours."}]
        r = c.chat.completions.create(model="m", messages=messages, max_tokens=24, temperature=0)
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        new = greedy_alone(model, list(ids), 24)
        assert r.choices[0].message.content == tok.decode(new, skip_special_tokens=True)
        assert r.usage.model_extra["speculative"]["tau"] > 1.0
