"""Continuous batching for servers: one `SpeculativeGenerator` driven by a background thread.

`EngineLoop.submit` queues a request (bounded: beyond `max_queue` waiting requests it raises
`Overloaded`); the loop thread moves waiting requests into the generator while fewer than
`max_batch` are active, runs one speculative step for the whole batch, and hands every
request's new tokens and its end to the request's `Handle` callbacks (called on the loop
thread: a server forwards them to its event loop). `cancel` removes a request at once, queued or
running (its rows leave the batch before the next step). `close` stops taking requests, lets the
in-flight ones finish within a grace period, then cancels the rest and stops the thread.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redrafter_rs.engine.sampling import SamplingParams
from redrafter_rs.engine.scheduler import Request, SpeculativeGenerator
from redrafter_rs.errors import RedrafterError

log = logging.getLogger("redrafter_rs.serving")


class Overloaded(RedrafterError):
    """The waiting queue is full (HTTP 429)."""


class Closed(RedrafterError):
    """The loop is shutting down or stopped (HTTP 503)."""


@dataclass
class Handle:
    """One request's callbacks: `on_tokens(new_ids)` per step with new tokens, then exactly one
    `on_done(request, error)`: `request` is the engine's `Request` (tokens, stats, finish
    reason), or None with `error` a `RedrafterError` (the request was refused, e.g. a prompt
    too long) or a `RuntimeError` (the engine failed), or None with no error (cancelled while
    it waited)."""

    on_tokens: Callable[[list[int]], None]
    on_done: Callable[[Request | None, Exception | None], None]
    prompt: list[int] = field(default_factory=list)
    sampling: SamplingParams | None = None
    max_new_tokens: int = 16
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class LoopStats:
    """Totals since start, read by /metrics."""

    requests: collections.Counter = field(default_factory=collections.Counter)  # by outcome
    tokens: int = 0  # generated tokens
    accepted: int = 0  # draft tokens accepted
    verify_steps: int = 0  # row-steps (one per row per step)
    accepted_at_depth: list[int] = field(default_factory=list)  # row-steps accepting >= d
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))


class EngineLoop:
    def __init__(
        self,
        make_generator: Callable[[], SpeculativeGenerator],
        max_batch: int = 16,
        max_queue: int = 64,
    ) -> None:
        """`make_generator()` builds the generator (again after an engine error, so one bad
        step cannot wedge the server)."""
        self._make = make_generator
        self.gen = make_generator()
        self.max_batch, self.max_queue = max_batch, max_queue
        self._ids = itertools.count()
        self._waiting: collections.deque[tuple[int, Handle]] = collections.deque()
        self._running: dict[int, Handle] = {}
        self._cancelled: set[int] = set()
        self._cv = threading.Condition()
        self._closing = False
        self._stopped = False
        self.stats = LoopStats()
        self._thread = threading.Thread(target=self._run, name="redrafter-engine", daemon=True)
        self._thread.start()

    # ---- the server's side ------------------------------------------------------------------
    def submit(self, handle: Handle) -> int:
        """Queue a request; returns its id. Raises `Overloaded` or `Closed`; a bad request
        (prompt too long for the model, bad ids) raises `RedrafterError` when it is added to the
        generator, reported through `on_done(None, message)`."""
        with self._cv:
            if not self.accepting:
                raise Closed("the server is shutting down; no new requests")
            if len(self._waiting) >= self.max_queue:
                self.stats.requests["rejected"] += 1
                raise Overloaded(
                    f"server at capacity: {len(self._waiting)} requests already wait for a "
                    f"batch slot (max queue {self.max_queue}, max batch {self.max_batch}); "
                    "retry later"
                )
            rid = next(self._ids)
            self._waiting.append((rid, handle))
            self._cv.notify()
            return rid

    def cancel(self, rid: int) -> None:
        """Stop request `rid` (a client went away, or a stop string matched); its `on_done`
        is still called once, with finish reason "cancelled" unless it had finished."""
        with self._cv:
            self._cancelled.add(rid)
            self._cv.notify()

    @property
    def accepting(self) -> bool:
        """Whether `submit` takes requests (false once `close` began)."""
        return not (self._closing or self._stopped)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def batch_size(self) -> int:
        return len(self._running)

    def close(self, grace_s: float = 30.0) -> None:
        """Stop taking requests, let in-flight ones finish for up to `grace_s`, cancel the
        rest, stop the thread."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            with self._cv:
                if not self._waiting and not self._running:
                    break
            time.sleep(0.01)
        with self._cv:
            for rid in [r for r, _ in self._waiting] + list(self._running):
                self._cancelled.add(rid)
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=max(grace_s, 5.0))

    # ---- the loop thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._waiting or self._running or self._cancelled or self._stopped):
                    self._cv.wait()
                self._apply_cancels()
                if self._stopped and not self._running and not self._waiting:
                    return
                self._admit()
            if not self._running:
                continue
            try:
                out = self.gen.step()
            except Exception as e:  # an engine bug must not wedge the server: fail, rebuild
                log.exception("engine step failed")
                self._fail_all(RuntimeError(f"engine error: {type(e).__name__}: {e}"))
                continue
            self._deliver(out)

    def _apply_cancels(self) -> None:
        if not self._cancelled:
            return
        kept = collections.deque()
        for rid, handle in self._waiting:
            if rid in self._cancelled:
                self.stats.requests["cancelled"] += 1
                handle.on_done(None, None)
            else:
                kept.append((rid, handle))
        self._waiting = kept
        for rid in list(self._cancelled):
            if rid in self._running:
                self.gen.cancel(rid)  # it finishes as "cancelled"; delivered below
        self._cancelled.clear()
        self._collect()

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.max_batch:
            rid, handle = self._waiting.popleft()
            try:
                self.gen.add(rid, handle.prompt, handle.sampling, handle.max_new_tokens)
            except RedrafterError as e:
                self.stats.requests["invalid"] += 1
                handle.on_done(None, e)
                continue
            self._running[rid] = handle

    def _deliver(self, out: dict) -> None:
        for rid, tokens in out.items():
            handle = self._running.get(rid)
            if handle is not None and tokens:
                self.stats.tokens += len(tokens)
                handle.on_tokens(tokens)
        self.stats.recent.append((time.perf_counter(), sum(len(t) for t in out.values())))
        with self._cv:
            self._collect()

    def _collect(self) -> None:
        for rid, req in self.gen.pop_finished().items():
            handle = self._running.pop(rid, None)
            if handle is None:
                continue
            self._record(req)
            handle.on_done(req, None)

    def _record(self, req: Request) -> None:
        st = self.stats
        st.requests[req.finish_reason or "unknown"] += 1
        acc = req.stats.accepted_per_step
        st.accepted += sum(acc)
        st.verify_steps += len(acc)
        depth = max(acc, default=0)
        if len(st.accepted_at_depth) < depth:
            st.accepted_at_depth += [0] * (depth - len(st.accepted_at_depth))
        for a in acc:
            for d in range(a):
                st.accepted_at_depth[d] += 1

    def _fail_all(self, error: Exception) -> None:
        with self._cv:
            failed = list(self._running.values())
            self._running.clear()
            self.stats.requests["error"] += len(failed)
        for handle in failed:
            handle.on_done(None, error)
        self.gen = self._make()

    def tokens_per_s(self, window_s: float = 10.0) -> float:
        """Generated tokens per second over the last `window_s` seconds of steps."""
        now = time.perf_counter()
        recent = [(t, n) for t, n in list(self.stats.recent) if now - t <= window_s]
        if len(recent) < 2:
            return 0.0
        span = recent[-1][0] - recent[0][0]
        return sum(n for _, n in recent[1:]) / span if span > 0 else 0.0
