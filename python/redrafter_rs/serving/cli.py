"""`redrafter serve`: the OpenAI-compatible server on the command line.

Speculation flags follow vLLM's `speculative_config` keys where they map
(`--speculative-method`, `--num-speculative-tokens`, `--speculative-model`), plus ReDrafter's own
(`--beam-width`, `--tree-nodes`, `--retrieval`, `--adaptive`).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import threading
import time

from redrafter_rs._flags import add_drafter, add_model, add_threads, apply_threads
from redrafter_rs._validate import positive_int
from redrafter_rs.errors import RedrafterError, check

METHODS = ("redrafter", "draft_model", "ngram", "none")


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (continuous batching)")
    add_model(p, "default", "default | gemma-3-270m | model directory")
    p.add_argument("--served-model-name", default=None, help="the id in /v1/models")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--speculative-method", choices=METHODS, default="redrafter",
        help="redrafter: the RNN drafter (+ retrieval unless --no-retrieval); draft_model: "
        "--speculative-model proposes; ngram: retrieval drafts alone (prompt lookup); none: "
        "plain decoding",
    )  # fmt: skip
    p.add_argument(
        "--num-speculative-tokens", type=positive_int, default=3,
        help="draft tokens per beam (the beam length L is this + 1)",
    )  # fmt: skip
    p.add_argument(
        "--speculative-model", default=None, metavar="SPEC",
        help="for draft_model: DIR, early-exit:K or int8",
    )  # fmt: skip
    add_drafter(p)
    p.add_argument("--beam-width", "-W", type=positive_int, default=4)
    p.add_argument("--tree-nodes", type=positive_int, default=None, metavar="N")
    p.add_argument("--retrieval", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: the target's linear layers on redrafter-rs's kernels")  # fmt: skip
    p.add_argument("--max-batch", type=positive_int, default=16, help="requests decoded at once")
    p.add_argument(
        "--max-queue", type=positive_int, default=64,
        help="requests waiting for a batch slot before new ones get 429",
    )  # fmt: skip
    p.add_argument("--max-tokens-default", type=positive_int, default=256)
    p.add_argument("--grace-s", type=float, default=30.0, help="shutdown grace period")
    add_threads(p)
    p.set_defaults(func=cmd_serve)


def build_server(args: argparse.Namespace, model=None, tokenizer=None):
    """(FastAPI app, Server) from the flags; `model`/`tokenizer` override `--model` (tests)."""
    import redrafter_rs as rr
    from redrafter_rs.serving.loop import EngineLoop
    from redrafter_rs.serving.openai_server import Server, create_app

    apply_threads(args.threads)
    if model is None:
        from redrafter_rs.models import load_model

        model, tokenizer = load_model(args.model)
    if args.fast and model.device.type == "cpu":
        rr.accelerate(model)
    drafter, retrieval = make_drafter(args, model, tokenizer)
    L = args.num_speculative_tokens + 1
    W = args.beam_width
    if args.speculative_method == "none":
        W = L = 1
    config = rr.SpecConfig(
        beam_width=W,
        beam_length=L,
        tree_nodes=args.tree_nodes,
        adaptive=args.adaptive and args.tree_nodes is None and L > 1,
    )

    def make_generator():
        d = drafter
        if retrieval:
            from redrafter_rs.drafters.retrieval import with_retrieval

            d = with_retrieval(drafter, True)
        return rr.SpeculativeGenerator(model, d, config)

    loop = EngineLoop(make_generator, max_batch=args.max_batch, max_queue=args.max_queue)
    name = args.served_model_name or str(args.model)
    limit = getattr(model.config, "max_position_embeddings", None)
    server = Server(loop, tokenizer, name, limit, args.max_tokens_default, args.grace_s)
    return create_app(server), server


def make_drafter(args: argparse.Namespace, model, tokenizer):
    """(drafter or None, retrieval on?) for the speculation flags."""
    method = args.speculative_method
    if method == "none":
        from redrafter_rs.drafters.protocol import NoDrafter

        return NoDrafter(), False
    if method == "ngram":
        return None, True
    if method == "draft_model":
        check(args.speculative_model is not None, "--speculative-method draft_model needs "
              "--speculative-model (DIR, early-exit:K or int8)")  # fmt: skip
        from redrafter_rs.drafters.draft_model import from_spec

        return from_spec(args.speculative_model, model, tokenizer)[0], args.retrieval
    from redrafter_rs.assets import load_drafter

    drafter, _ = load_drafter(model, args.drafter, model_name=args.model)
    if drafter is None:
        raise RedrafterError(
            f"no drafter for {args.model}: pass --drafter DIR, or --speculative-method "
            "ngram / draft_model / none"
        )
    return drafter, args.retrieval


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    app, server = build_server(args)
    print(f"redrafter serve: http://{args.host}:{args.port}/v1 (model {server.model_name})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info",
                timeout_graceful_shutdown=int(args.grace_s))  # fmt: skip
    return 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(argv: list[str], model=None, tokenizer=None, port: int | None = None):
    """`redrafter serve` flags `argv` as a server running in a background thread of this process
    (uvicorn on a free loopback port unless `port`); `model`/`tokenizer` replace `--model`.
    Yields (base_url, Server, uvicorn.Server); the server shuts down gracefully on exit."""
    import httpx
    import uvicorn

    from redrafter_rs.cli import build_parser

    args = build_parser().parse_args(["serve", *argv])
    app, server = build_server(args, model, tokenizer)
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=int(args.grace_s))  # fmt: skip
    web = uvicorn.Server(config)
    thread = threading.Thread(target=web.run, name="redrafter-http", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        time.sleep(0.05)
    else:
        raise RedrafterError(f"the server did not come up on {url}")
    try:
        yield url, server, web
    finally:
        web.should_exit = True
        thread.join(timeout=args.grace_s + 30)
