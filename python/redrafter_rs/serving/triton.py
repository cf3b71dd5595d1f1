"""The speculative engine as a Python model on NVIDIA Triton Inference Server (via PyTriton).

`RedrafterTriton` starts a real `tritonserver` (the binary bundled with `nvidia-pytriton`) and
binds two models to one continuous-batching `EngineLoop`, so requests from both share the
engine's batch:

* ``redrafter``: one response per request (HTTP and gRPC `infer`). Triton's dynamic batcher
  groups requests that wait together into one call; `instances` calls run at once, and every
  sequence of every call joins the engine's running batch as soon as it is submitted.
* ``redrafter_stream``: decoupled (streaming; gRPC `stream_infer`). It sends one response per
  engine step that produced tokens for the request (``text_output`` the new text,
  ``output_ids`` the new ids), then a last response with any held-back text and
  ``spec_stats``; that last one has no ``output_ids``.

Inputs (each with a leading batch dimension; every row of ``redrafter`` is its own sequence):
``text_input`` (BYTES [1], needs a tokenizer) or ``input_ids`` (INT64 [-1]), and the optional
``max_tokens`` (INT32 [1], default `max_tokens_default`), ``temperature`` (FP32 [1], default 0:
greedy), ``top_p`` (FP32 [1], default 1), ``top_k`` (INT32 [1], default 0: off) and ``seed``
(INT64 [1], sampled requests only). Outputs: ``text_output`` (BYTES [1]), ``output_ids`` (INT64
[-1]; rows of one ``redrafter`` request are padded with -1 to the longest) and ``spec_stats``
(BYTES [1], JSON: finish_reason, prompt/completion tokens, steps, tau, acceptance per depth,
tree shapes).

PyTriton reports errors per call, not per request: a request that fails (bad input, a prompt
too long for the model, a full queue) fails the requests Triton's dynamic batcher put in the
same ``redrafter`` call. Each ``redrafter_stream`` request is a call of its own.

Run it::

    import redrafter_rs as rr
    from redrafter_rs.models import load_default_model
    from redrafter_rs.serving.triton import serve_triton

    model, tok = load_default_model()
    drafter = None  # retrieval (prompt lookup) drafts alone; or an rr.RecurrentDrafter
    server = serve_triton(model, tok, drafter, beam_width=4, beam_length=4,
                          http_port=8000, grpc_port=8001, metrics_port=8002)
    server.serve()  # blocks until Ctrl-C

and query it with ``tritonclient`` (``pip install "tritonclient[http,grpc]"``)::

    import numpy as np, tritonclient.http as th
    client = th.InferenceServerClient("127.0.0.1:8000")
    text = th.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"Hello"]], dtype=object))
    result = client.infer("redrafter", [text])
    print(result.as_numpy("text_output")[0, 0].decode())

Needs ``pip install nvidia-pytriton`` (Linux x86-64, glibc 2.35 or newer; no GPU needed).

Triton runs PyTriton's model proxy in its Python backend's stub process. The stub embeds the
libpython it finds through the dynamic loader, takes its prefix (and so site-packages) from
the first ``python3`` on PATH, and ignores PYTHONPATH (isolated mode). Its numpy bridge predates
numpy 2: under numpy 2 every output tensor reaches the client empty. So the stub needs a
CPython of this process's minor version with numpy < 2 and pyzmq (`backend_python`, or the
environment variable REDRAFTER_TRITON_PYTHON: an interpreter or an environment directory). By
default it takes this interpreter when its numpy is older than 2, otherwise the system Python
(/usr or /usr/local) when that has numpy < 2 and pyzmq (Debian and Ubuntu: `apt-get install
python3-numpy python3-zmq`). This process keeps its own numpy. `TritonUnavailable` says why no
interpreter fits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import pathlib
import subprocess
import sys
import threading
from dataclasses import dataclass

import numpy as np

from redrafter_rs.engine.sampling import SamplingParams
from redrafter_rs.engine.scheduler import SpecConfig, SpeculativeGenerator
from redrafter_rs.errors import RedrafterError
from redrafter_rs.serving.loop import EngineLoop, Handle
from redrafter_rs.serving.openai_server import StopText, speculative_usage

log = logging.getLogger("redrafter_rs.serving.triton")

BACKEND_PYTHON_ENV = "REDRAFTER_TRITON_PYTHON"
PAD_ID = -1  # pads `output_ids` rows of one multi-row request to a common length
_START_LOCK = threading.Lock()  # the backend environment is patched process-wide while starting


class TritonUnavailable(RedrafterError):
    """Triton (through PyTriton) cannot run here; the message says why."""


class BadInput(RedrafterError):
    """A request's inputs are missing, malformed or out of range."""


# ---- the Python that Triton's Python-backend stub embeds ---------------------------------------
@dataclass(frozen=True)
class BackendPython:
    """An environment for the stub: `env`/bin/python3 is the interpreter, `libdir` holds its
    shared libpython (put first on the stub's LD_LIBRARY_PATH)."""

    env: pathlib.Path
    libdir: str
    numpy: str


_PROBE = """
import json, os, sys, sysconfig
out = {"version": list(sys.version_info[:2]), "numpy": None, "zmq": False, "error": None}
try:
    import numpy
    out["numpy"] = numpy.__version__
    import zmq
    out["zmq"] = True
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
libdir = sysconfig.get_config_var("LIBDIR") or ""
soname = sysconfig.get_config_var("INSTSONAME") or ""
out["libdir"] = libdir
out["libpython"] = bool(soname) and os.path.exists(os.path.join(libdir, soname))
print(json.dumps(out))
"""


def _probe(python: pathlib.Path) -> dict | str:
    """What `python` offers the stub (isolated, as the stub runs it), or why it cannot."""
    if not python.exists():
        return f"{python} does not exist"
    try:
        done = subprocess.run(
            [str(python), "-I", "-c", _PROBE], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{python} did not run: {e}"
    if done.returncode != 0:
        return f"{python} failed: {done.stderr.strip()[-300:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_env(env: pathlib.Path) -> BackendPython | str:
    python = env / "bin" / "python3"
    info = _probe(python)
    if isinstance(info, str):
        return info
    have, want = ".".join(map(str, info["version"])), ".".join(map(str, sys.version_info[:2]))
    if have != want:
        return f"{python} is Python {have}, not {want} (the stub is built per minor version)"
    if info["numpy"] is None or not info["zmq"]:
        return f"{python} lacks numpy or pyzmq ({info['error']})"
    if int(info["numpy"].split(".")[0]) >= 2:
        return (
            f"{python} has numpy {info['numpy']}: the stub's numpy bridge (pybind11 before "
            "numpy 2 support) sends empty outputs under numpy 2"
        )
    if not info["libpython"]:
        return f"{python} has no shared libpython in {info['libdir']} for the stub to load"
    return BackendPython(env, info["libdir"], info["numpy"])


def _env_of(path: str | os.PathLike) -> pathlib.Path:
    """An environment directory from an interpreter path (.../bin/python3.X) or a directory."""
    p = pathlib.Path(path)
    return p if p.is_dir() else p.parent.parent


def find_backend_python(explicit: str | None = None) -> BackendPython:
    """The environment the stub should run (see the module docs): `explicit`, else
    $REDRAFTER_TRITON_PYTHON, else the first that fits; raises `TritonUnavailable` with every
    candidate's reason."""
    return _find_backend_python(explicit or os.environ.get(BACKEND_PYTHON_ENV) or None)


@functools.lru_cache(maxsize=8)
def _find_backend_python(explicit: str | None) -> BackendPython:
    if explicit:
        found = _check_env(_env_of(explicit))
        if isinstance(found, str):
            raise TritonUnavailable(f"backend Python {explicit!r} does not fit: {found}")
        return found
    reasons = []
    candidates = [pathlib.Path(sys.exec_prefix), pathlib.Path("/usr"), pathlib.Path("/usr/local")]
    for env in dict.fromkeys(candidates):
        found = _check_env(env)
        if not isinstance(found, str):
            return found
        reasons.append(found)
    v = f"{sys.version_info[0]}.{sys.version_info[1]}"
    raise TritonUnavailable(
        "no Python for Triton's Python-backend stub: it needs CPython "
        f"{v} with numpy < 2 and pyzmq and a shared libpython. Tried: " + "; ".join(reasons)
        + f". Fix: `apt-get install python3-numpy python3-zmq` (when /usr/bin/python3 is {v}), "
        "or a virtual environment of this Python with `numpy<2` and `pyzmq`, passed as "
        f"backend_python= or ${BACKEND_PYTHON_ENV}"
    )  # fmt: skip


@contextlib.contextmanager
def _backend_environment(backend: BackendPython):
    """While Triton starts (it copies this process's environment): PyTriton's choice of the
    stub's Python replaced by `backend`, whose libpython comes first on LD_LIBRARY_PATH."""
    import pytriton.server.triton_server as pts

    with _START_LOCK:
        saved_ld = os.environ.get("LD_LIBRARY_PATH")
        saved_fn = getattr(pts, "get_triton_python_backend_python_env", None)
        if saved_fn is None:
            log.warning("this PyTriton has no get_triton_python_backend_python_env: the stub "
                        "runs PyTriton's default Python")  # fmt: skip
        else:
            pts.get_triton_python_backend_python_env = lambda: backend.env
        os.environ["LD_LIBRARY_PATH"] = backend.libdir + (f":{saved_ld}" if saved_ld else "")
        try:
            yield
        finally:
            if saved_fn is not None:
                pts.get_triton_python_backend_python_env = saved_fn
            if saved_ld is None:
                os.environ.pop("LD_LIBRARY_PATH", None)
            else:
                os.environ["LD_LIBRARY_PATH"] = saved_ld


# ---- requests ------------------------------------------------------------------------------
@dataclass
class _Job:
    prompt: list[int]
    sampling: SamplingParams
    max_tokens: int


class _Events:
    """One engine request as seen from an asyncio loop: the engine thread's callbacks post
    ("tokens", ids) and then ("done", request, error) onto `queue`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.done = False

    def _post(self, item: tuple) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: PyTriton is stopping
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def on_tokens(self, tokens: list[int]) -> None:
        self._post(("tokens", list(tokens)))

    def on_done(self, request, error: Exception | None) -> None:
        self._post(("done", request, error))


def _column(data: dict, name: str, rows: int, default, cast):
    """Per-row values of an optional [B, 1] input."""
    if name not in data:
        return [default] * rows
    values = np.asarray(data[name]).reshape(-1)
    if len(values) != rows:
        raise BadInput(f"'{name}' has {len(values)} values for {rows} sequences")
    return [cast(v) for v in values.tolist()]


def _finite(name: str, value: float, low: float, high: float | None = None) -> float:
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        span = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise BadInput(f"'{name}' must be a finite number in {span}, got {value}")
    return value


def _text(value) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadInput(f"'text_input' is not UTF-8: {e}") from None
    return str(value)


def _bytes_column(values: list) -> np.ndarray:
    return np.array([[v.encode("utf-8")] for v in values], dtype=object)


class RedrafterTriton:
    """The engine served by Triton: `start()` (or `with`), then `stop()`; `serve()` blocks."""

    def __init__(
        self,
        model,
        tokenizer=None,
        drafter=None,
        *,
        retrieval: bool = False,
        max_batch: int = 16,
        max_queue: int = 64,
        max_tokens_default: int = 256,
        host: str = "127.0.0.1",
        http_port: int | None = 0,
        grpc_port: int | None = 0,
        metrics_port: int | None = 0,
        instances: int = 2,
        model_name: str = "redrafter",
        stream_model_name: str | None = None,
        backend_python: str | None = None,
        grace_s: float = 30.0,
        log_verbose: int = 0,
        log_file: str | os.PathLike | None = None,
        **spec,
    ) -> None:
        """`drafter`: a drafter module (e.g. `RecurrentDrafter`), wrapped with retrieval drafts
        when `retrieval`; None drafts by retrieval (prompt lookup) alone. `spec`: `SpecConfig`
        fields (beam_width, beam_length, tree_nodes, adaptive, ...). Ports: 0 picks a free
        one, None keeps Triton's default (8000 HTTP, 8001 gRPC, 8002 metrics). `instances`:
        ``redrafter`` calls served at once. `log_file`: Triton's log there instead of this
        process's stdout/stderr."""
        if not (isinstance(instances, int) and instances >= 1):
            raise RedrafterError(f"instances must be an integer >= 1, got {instances!r}")
        self.model, self.tok, self.drafter, self.retrieval = model, tokenizer, drafter, retrieval
        self.config = SpecConfig(**spec)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_tokens_default = max_tokens_default
        self.host = host
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.instances = instances
        self.model_name = model_name
        self.stream_model_name = stream_model_name or f"{model_name}_stream"
        self.backend_python = backend_python
        self.grace_s = grace_s
        self.log_verbose = log_verbose
        self.log_file = None if log_file is None else pathlib.Path(log_file)
        self.loop: EngineLoop | None = None
        self._triton = None

    # ---- lifecycle -------------------------------------------------------------------------
    def make_generator(self) -> SpeculativeGenerator:
        from redrafter_rs.drafters.retrieval import RetrievalDrafter, with_retrieval

        if self.drafter is None:
            drafter = RetrievalDrafter()
        else:
            drafter = with_retrieval(self.drafter, True) if self.retrieval else self.drafter
        return SpeculativeGenerator(self.model, drafter, self.config)

    def start(self) -> RedrafterTriton:
        """Start Triton and load both models (about 5 s on CPU); raises `TritonUnavailable`
        when PyTriton is missing or no Python fits its stub."""
        if self._triton is not None:
            return self
        try:
            from pytriton.model_config import DynamicBatcher, ModelConfig
            from pytriton.triton import Triton, TritonConfig
        except ImportError as e:
            raise TritonUnavailable(f"PyTriton is not installed ({e}): pip install "
                                    "nvidia-pytriton") from None  # fmt: skip
        backend = find_backend_python(self.backend_python)
        from redrafter_rs.serving.cli import free_port

        for kind, port in self.ports.items():
            if port == 0:
                self.ports[kind] = free_port(self.host)
        self.loop = EngineLoop(self.make_generator, self.max_batch, self.max_queue)
        config = TritonConfig(
            http_address=self.host,
            http_port=self.ports["http"],
            grpc_address=self.host,
            grpc_port=self.ports["grpc"],
            metrics_address=self.host,
            metrics_port=self.ports["metrics"],
            log_verbose=self.log_verbose,
            log_file=self.log_file,
            exit_timeout_secs=max(int(self.grace_s), 1),
        )
        inputs, outputs = self._tensors()
        triton = None
        try:
            triton = Triton(config=config)
            triton.bind(
                model_name=self.model_name,
                infer_func=[self._infer] * self.instances,
                inputs=inputs,
                outputs=outputs,
                config=ModelConfig(max_batch_size=self.max_batch, batcher=DynamicBatcher()),
            )
            triton.bind(
                model_name=self.stream_model_name,
                infer_func=self._infer_stream,
                inputs=inputs,
                outputs=outputs,
                config=ModelConfig(max_batch_size=1, decoupled=True),
            )
            with _backend_environment(backend):
                triton.run()
        except Exception as e:
            if triton is not None:
                with contextlib.suppress(Exception):
                    triton.stop()
            self.loop.close(0.0)
            self.loop = None
            raise TritonUnavailable(f"Triton did not start: {type(e).__name__}: {e}") from e
        self._triton = triton
        return self

    def serve(self) -> None:
        """Start (if needed) and block until Triton stops (Ctrl-C stops it)."""
        self.start()
        print(f"redrafter on Triton: HTTP {self.http_url}, gRPC {self.grpc_url}; models "
              f"{self.model_name!r} and {self.stream_model_name!r}")  # fmt: skip
        try:
            self._triton.serve()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop Triton (in-flight requests get `grace_s`), then the engine loop."""
        triton, self._triton = self._triton, None
        if triton is not None:
            triton.stop()
        if self.loop is not None:
            self.loop.close(self.grace_s)
            self.loop = None

    def __enter__(self) -> RedrafterTriton:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.ports['http'] or 8000}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports['grpc'] or 8001}"

    @staticmethod
    def _tensors():
        from pytriton.model_config import Tensor

        inputs = [
            Tensor(name="text_input", dtype=np.bytes_, shape=(1,), optional=True),
            Tensor(name="input_ids", dtype=np.int64, shape=(-1,), optional=True),
            Tensor(name="max_tokens", dtype=np.int32, shape=(1,), optional=True),
            Tensor(name="temperature", dtype=np.float32, shape=(1,), optional=True),
            Tensor(name="top_p", dtype=np.float32, shape=(1,), optional=True),
            Tensor(name="top_k", dtype=np.int32, shape=(1,), optional=True),
            Tensor(name="seed", dtype=np.int64, shape=(1,), optional=True),
        ]
        outputs = [
            Tensor(name="text_output", dtype=np.bytes_, shape=(1,)),
            Tensor(name="output_ids", dtype=np.int64, shape=(-1,)),
            Tensor(name="spec_stats", dtype=np.bytes_, shape=(1,)),
        ]
        return inputs, outputs

    # ---- inference -------------------------------------------------------------------------
    def _jobs(self, request) -> list[_Job]:
        """One job per row of a Triton request (validated; nothing is submitted here)."""
        data = dict(request.items())
        if ("text_input" in data) == ("input_ids" in data):
            raise BadInput("send exactly one of 'text_input' (a string) and 'input_ids' "
                           "(int64 token ids)")  # fmt: skip
        if "input_ids" in data:
            ids = np.asarray(data["input_ids"])
            if ids.dtype.kind not in "iu":
                raise BadInput(f"'input_ids' must be integers, got {ids.dtype}")
            prompts = [[int(t) for t in row] for row in ids.reshape(len(ids), -1)]
        else:
            if self.tok is None:
                raise BadInput("this server has no tokenizer: send 'input_ids'")
            texts = [_text(v) for v in np.asarray(data["text_input"]).reshape(-1).tolist()]
            prompts = [list(self.tok(t).input_ids) for t in texts]
        rows = len(prompts)
        if any(not p for p in prompts):
            raise BadInput("a prompt is empty")
        max_tokens = _column(data, "max_tokens", rows, self.max_tokens_default, int)
        temperature = _column(data, "temperature", rows, 0.0, float)
        top_p = _column(data, "top_p", rows, 1.0, float)
        top_k = _column(data, "top_k", rows, 0, int)
        seed = _column(data, "seed", rows, None, int)
        jobs = []
        for i, prompt in enumerate(prompts):
            if max_tokens[i] < 1:
                raise BadInput(f"'max_tokens' must be >= 1, got {max_tokens[i]}")
            t = _finite("temperature", temperature[i], 0.0)
            p = _finite("top_p", top_p[i], 0.0, 1.0)
            if p == 0.0:
                raise BadInput("'top_p' must be in (0, 1], got 0")
            if top_k[i] < -1:
                raise BadInput(f"'top_k' must be >= 0 (0 or -1: off), got {top_k[i]}")
            try:
                sampling = SamplingParams(
                    temperature=t, top_p=p, top_k=max(top_k[i], 0),
                    seed=seed[i] if t > 0 else None,
                )  # fmt: skip
            except RedrafterError as e:
                raise BadInput(str(e)) from None
            jobs.append(_Job(prompt, sampling, max_tokens[i]))
        return jobs

    def _submit(self, job: _Job, events: _Events) -> int:
        loop = self.loop
        if loop is None:
            raise RedrafterError("the server is not running")
        handle = Handle(events.on_tokens, events.on_done, job.prompt, job.sampling, job.max_tokens)
        return loop.submit(handle)

    @staticmethod
    def _finished(request, error: Exception | None):
        if error is not None:
            raise error if isinstance(error, RedrafterError) else RuntimeError(str(error))
        if request is None:
            raise RedrafterError("the request was cancelled before it ran (server shutting down)")
        return request

    @staticmethod
    def _stats(job: _Job, request) -> str:
        usage = {
            "finish_reason": request.finish_reason,
            "prompt_tokens": len(job.prompt),
            "completion_tokens": len(request.tokens),
        }
        return json.dumps({**usage, **speculative_usage(request)})

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True) if self.tok is not None else ""

    async def _infer(self, requests) -> list[dict]:
        """``redrafter``: every row of every request joins the engine; one response each."""
        per_request = [self._jobs(r) for r in requests]  # a bad request fails before any runs
        loop = asyncio.get_running_loop()
        running: list[tuple[int, _Events]] = []
        try:
            for jobs in per_request:
                for job in jobs:
                    events = _Events(loop)
                    running.append((self._submit(job, events), events))
            finished = []
            for _, events in running:
                while True:
                    item = await events.queue.get()
                    if item[0] == "done":
                        events.done = True
                        finished.append(self._finished(item[1], item[2]))
                        break
        finally:
            for rid, events in running:
                if not events.done and self.loop is not None:
                    self.loop.cancel(rid)
        responses, at = [], 0
        for jobs in per_request:
            done, at = finished[at : at + len(jobs)], at + len(jobs)
            width = max(len(r.tokens) for r in done)
            ids = np.full((len(done), width), PAD_ID, dtype=np.int64)
            for i, r in enumerate(done):
                ids[i, : len(r.tokens)] = r.tokens
            stats = [self._stats(j, r) for j, r in zip(jobs, done, strict=True)]
            responses.append({
                "text_output": _bytes_column([self._decode(r.tokens) for r in done]),
                "output_ids": ids,
                "spec_stats": _bytes_column(stats),
            })  # fmt: skip
        return responses

    async def _infer_stream(self, requests):
        """``redrafter_stream``: a response per engine step with new tokens, then the stats."""
        if len(requests) != 1:
            raise BadInput(f"the streaming model takes one request per call, got {len(requests)}")
        jobs = self._jobs(requests[0])
        if len(jobs) != 1:
            raise BadInput(f"the streaming model takes one sequence per request, got {len(jobs)}")
        job = jobs[0]
        events = _Events(asyncio.get_running_loop())
        rid = self._submit(job, events)
        text = StopText(self.tok, []) if self.tok is not None else None
        try:
            while True:
                item = await events.queue.get()
                if item[0] == "tokens":
                    piece = text.push(item[1]) if text is not None else ""
                    yield [{
                        "text_output": _bytes_column([piece]),
                        "output_ids": np.array([item[1]], dtype=np.int64),
                    }]  # fmt: skip
                    continue
                events.done = True
                request = self._finished(item[1], item[2])
                tail = text.push([], final=True) if text is not None else ""
                yield [{
                    "text_output": _bytes_column([tail]),
                    "spec_stats": _bytes_column([self._stats(job, request)]),
                }]  # fmt: skip
                return
        finally:
            if not events.done and self.loop is not None:
                self.loop.cancel(rid)


def serve_triton(model, tokenizer=None, drafter=None, **kwargs) -> RedrafterTriton:
    """A started `RedrafterTriton` (see the module docs); `kwargs` as its constructor's
    (`SpecConfig` fields, max_batch, max_queue, http_port, grpc_port, ...). Call `serve()` to
    block, or use it as a context manager / `stop()` it."""
    return RedrafterTriton(model, tokenizer, drafter, **kwargs).start()
