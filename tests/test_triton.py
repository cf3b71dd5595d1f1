"""The engine on a real Triton Inference Server (PyTriton's bundled `tritonserver`), queried with
the official `tritonclient` over HTTP, gRPC and gRPC streaming (the decoupled model). A tiny
random Llama with a character-level tokenizer and an untrained RNN drafter plus retrieval:
greedy outputs must equal `model.generate` for each request alone.

Skipped when nvidia-pytriton or tritonclient is missing, or when Triton cannot start here (the
skip gives the reason, e.g. no Python with numpy < 2 for Triton's Python-backend stub: see
redrafter_rs/serving/triton.py)."""

from __future__ import annotations

import json
import queue
import threading

import numpy as np
import pytest
import torch

import redrafter_rs as rr
from helpers import char_tokenizer, tiny_llama

pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed")
th = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
tg = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")

from tritonclient.utils import InferenceServerException  # noqa: E402

from redrafter_rs.serving.triton import (  # noqa: E402
    PAD_ID,
    RedrafterTriton,
    TritonUnavailable,
    find_backend_python,
)

V = 96
TIMEOUT_S = 120.0
PROMPTS = ["Hello world", "The cat sat on", "abc abc abc ab", "Why? Because.", "x", "0123 0123 01"]


@pytest.fixture(scope="module")
def tiny():
    model = tiny_llama(seed=21, vocab_size=V)
    model.generation_config.pad_token_id = 0
    torch.manual_seed(0)
    drafter = rr.RecurrentDrafter.for_target(model).eval()
    return model, char_tokenizer(), drafter


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    model, tok, drafter = tiny
    log_file = tmp_path_factory.mktemp("triton") / "triton.log"  # not the captured stdout
    try:
        running = RedrafterTriton(
            model, tok, drafter, retrieval=True, beam_width=3, beam_length=4,
            max_batch=8, max_queue=32, instances=2, grace_s=10.0, log_file=log_file,
        ).start()  # fmt: skip
    except TritonUnavailable as e:
        pytest.skip(f"Triton cannot run here: {e}")
    yield running
    running.stop()


def greedy_alone(model, ids: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n)
    return out[0, len(ids) :].tolist()


def ids_of(tok, text: str) -> list[int]:
    return list(tok(text).input_ids)


def inputs_for(client_mod, text=None, ids=None, max_tokens=None, **params) -> list:
    """Triton inputs for `client_mod` (tritonclient.http or .grpc): one row per text in `text`
    (a string or a list), or one row of `ids`; the parameters repeated for every row (Triton
    wants one batch size for all inputs)."""
    arrays = {}
    rows = 1
    if text is not None:
        texts = [text] if isinstance(text, str) else text
        rows = len(texts)
        arrays["text_input"] = np.array([[t.encode()] for t in texts], dtype=object)
    if ids is not None:
        arrays["input_ids"] = np.array([ids], dtype=np.int64)
    kinds = {"max_tokens": np.int32, "temperature": np.float32, "top_p": np.float32,
             "top_k": np.int32, "seed": np.int64}  # fmt: skip
    for name, value in {"max_tokens": max_tokens, **params}.items():
        if value is not None:
            arrays[name] = np.full((rows, 1), value, dtype=kinds[name])
    triton_types = {np.dtype(object): "BYTES", np.dtype(np.int64): "INT64",
                    np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32"}  # fmt: skip
    out = []
    for name, array in arrays.items():
        item = client_mod.InferInput(name, list(array.shape), triton_types[array.dtype])
        item.set_data_from_numpy(array)
        out.append(item)
    return out


def http_infer(server, **kwargs):
    with th.InferenceServerClient(server.http_url, network_timeout=TIMEOUT_S) as client:
        return client.infer(server.model_name, inputs_for(th, **kwargs))


def row(result, i: int = 0) -> tuple[list[int], str, dict]:
    ids = [t for t in result.as_numpy("output_ids")[i].tolist() if t != PAD_ID]
    text = result.as_numpy("text_output")[i, 0].decode()
    return ids, text, json.loads(result.as_numpy("spec_stats")[i, 0])


def stream(server, **kwargs) -> list:
    """All responses of one `redrafter_stream` request (the empty final one dropped)."""
    got: queue.Queue = queue.Queue()
    client = tg.InferenceServerClient(server.grpc_url)
    try:
        client.start_stream(callback=lambda result, error: got.put((result, error)))
        client.async_stream_infer(
            server.stream_model_name, inputs_for(tg, **kwargs), enable_empty_final_response=True
        )
        responses = []
        while True:
            result, error = got.get(timeout=TIMEOUT_S)
            if error is not None:
                raise error
            params = result.get_response().parameters
            final = "triton_final_response" in params and params["triton_final_response"].bool_param
            if result.get_response().outputs:
                responses.append(result)
            if final:
                return responses
    finally:
        client.stop_stream()
        client.close()


def test_bad_backend_python_is_explained():
    with pytest.raises(TritonUnavailable, match="does not exist"):
        find_backend_python("/nonexistent/bin/python3")


@pytest.mark.slow
def test_http_greedy_equals_generate(server, tiny):
    model, tok, _ = tiny
    for text, n in zip(PROMPTS[:3], (12, 7, 20), strict=True):
        ids, out_text, stats = row(http_infer(server, text=text, max_tokens=n))
        ref = greedy_alone(model, ids_of(tok, text), n)
        assert ids == ref, text
        assert out_text == tok.decode(ref, skip_special_tokens=True)
        assert stats["completion_tokens"] == len(ref)
        assert stats["prompt_tokens"] == len(ids_of(tok, text))
        assert stats["steps"] >= 1 and stats["tau"] >= 1.0
        assert stats["finish_reason"] in ("eos", "length")


@pytest.mark.slow
def test_grpc_input_ids_and_two_rows(server, tiny):
    model, tok, _ = tiny
    prompt = ids_of(tok, PROMPTS[3])
    with tg.InferenceServerClient(server.grpc_url) as client:
        result = client.infer(
            server.model_name, inputs_for(tg, ids=prompt, max_tokens=9), client_timeout=TIMEOUT_S
        )
    assert row(result)[0] == greedy_alone(model, prompt, 9)
    # one HTTP request with two sequences: each row is its own engine request
    result = http_infer(server, text=[PROMPTS[4], PROMPTS[5]], max_tokens=6)
    for i, text in enumerate(PROMPTS[4:6]):
        assert row(result, i)[0] == greedy_alone(model, ids_of(tok, text), 6), text


@pytest.mark.slow
def test_concurrent_http_requests(server, tiny):
    model, tok, _ = tiny
    budgets = [5, 16, 9, 3, 12, 7]
    results: dict[int, list[int]] = {}

    def one(i: int) -> None:
        results[i] = row(http_infer(server, text=PROMPTS[i], max_tokens=budgets[i]))[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    for i, text in enumerate(PROMPTS):
        assert results.get(i) == greedy_alone(model, ids_of(tok, text), budgets[i]), text


@pytest.mark.slow
def test_grpc_stream_one_response_per_step(server, tiny):
    model, tok, _ = tiny
    text, n = PROMPTS[1], 18
    responses = stream(server, text=text, max_tokens=n)
    chunks = [r.as_numpy("output_ids") for r in responses[:-1]]
    assert all(c is not None and c.shape[0] == 1 and c.shape[1] >= 1 for c in chunks)
    ids = [t for c in chunks for t in c[0].tolist()]
    ref = greedy_alone(model, ids_of(tok, text), n)
    assert ids == ref
    streamed = "".join(r.as_numpy("text_output")[0, 0].decode() for r in responses)
    assert streamed == tok.decode(ref, skip_special_tokens=True)
    last = responses[-1]
    assert last.as_numpy("output_ids") is None  # the stats response carries no ids
    stats = json.loads(last.as_numpy("spec_stats")[0, 0])
    assert stats["completion_tokens"] == len(ref)
    assert len(chunks) == stats["steps"]  # one per engine step (the first has the prefill's)


@pytest.mark.slow
def test_concurrent_streams(server, tiny):
    model, tok, _ = tiny
    results: dict[int, list[int]] = {}

    def one(i: int) -> None:
        responses = stream(server, ids=ids_of(tok, PROMPTS[i]), max_tokens=10 + i)
        results[i] = [t for r in responses[:-1] for t in r.as_numpy("output_ids")[0].tolist()]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    for i in range(3):
        assert results.get(i) == greedy_alone(model, ids_of(tok, PROMPTS[i]), 10 + i), i


@pytest.mark.slow
def test_seeded_sampling_repeats(server):
    first = row(http_infer(server, text=PROMPTS[0], max_tokens=10, temperature=0.9, seed=7))[0]
    again = row(http_infer(server, text=PROMPTS[0], max_tokens=10, temperature=0.9, seed=7))[0]
    assert first == again and len(first) >= 1


@pytest.mark.slow
def test_bad_requests_are_refused_with_the_reason(server, tiny):
    _, tok, _ = tiny
    with pytest.raises(InferenceServerException, match="exactly one of 'text_input'"):
        http_infer(server, max_tokens=4)
    with pytest.raises(InferenceServerException, match="'max_tokens' must be >= 1"):
        http_infer(server, text="hi", max_tokens=0)
    with pytest.raises(InferenceServerException, match="'top_p'"):
        http_infer(server, text="hi", max_tokens=4, temperature=1.0, top_p=0.0)
    too_long = ids_of(tok, "ab" * 200)  # 400 tokens: past the model's 256 positions
    with pytest.raises(InferenceServerException, match="max_position_embeddings"):
        http_infer(server, ids=too_long, max_tokens=4)
    with pytest.raises(InferenceServerException, match="token ids must be in"):
        http_infer(server, ids=[5, V + 3], max_tokens=4)
    with pytest.raises(InferenceServerException, match="exactly one of 'text_input'"):
        stream(server, max_tokens=4)
    # the server still answers afterwards
    assert len(row(http_infer(server, text="ok", max_tokens=3))[0]) >= 1


@pytest.mark.slow
def test_stop_shuts_the_server_down(server):
    with th.InferenceServerClient(server.http_url) as client:
        assert client.is_server_live()
    loop = server.loop
    server.stop()
    assert server.loop is None and not loop._thread.is_alive()
    client = th.InferenceServerClient(server.http_url, connection_timeout=2.0)
    try:
        with pytest.raises(Exception):  # noqa: B017 (refused: whatever the client raises)
            client.is_server_live()
    finally:
        client.close()
