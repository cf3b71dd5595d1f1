"""The step-level speculative decoding engine: request scheduling and the decode step.

One decode step over the B active requests (docs/design.md §2), stage by stage:
    propose  beams [B, W, L] from (h [B, H], g0 [B])     drafters/protocol.DrafterAdapter
    pack     tokens/depth/mask [B, N], unpacker [B, W, L]  Rust `pack_beams`, one call
    verify   one target forward over the packed trees      engine/batch.TreeVerifier (4D mask)
    accept   a token per node (argmax / exact sample), then  engine/acceptor.ExactAcceptor, then
             paths, emitted tokens, bonus, KV plan [B, M]    Rust `accept`, one call
    upkeep   keep each row's accepted path in the KV cache   engine/batch.Batch.advance, O(tree)
Host <-> device per step: the beams and choice [B, N] to the host; the tree arrays, the
acceptance's KV plan, positions and bonus tokens (and seeded rows' uniforms) to the device.
The drafter, verifier and acceptor are constructor arguments; `Batch` holds the rows' state.

Requests join (`add`, prefilled at the next `step`) and leave (`cancel`, EOS, token budget)
between steps; a finished row is dropped from the batch so it stops costing target compute.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from redrafter_rs import _core
from redrafter_rs._common import cuda_sync, eos_ids, tau_of
from redrafter_rs._validate import (
    check_bool,
    check_float,
    check_hashable,
    check_int,
    check_optional_int,
)
from redrafter_rs.drafters.protocol import DrafterAdapter
from redrafter_rs.engine.acceptor import Acceptor, ExactAcceptor, VerifiedStep
from redrafter_rs.engine.batch import Batch, TreeVerifier
from redrafter_rs.engine.policy import (
    PolicyConfig,
    Shape,
    ShapePolicy,
    shape_name,
)
from redrafter_rs.engine.sampling import GREEDY, SamplingParams, choose_tokens
from redrafter_rs.engine.target import Target
from redrafter_rs.engine.transfer import Staging
from redrafter_rs.errors import RedrafterError, check


@dataclass
class SpecConfig:
    beam_width: int = 4  # W: beams drafted per step
    beam_length: int = 5  # L: tokens per beam, including the target's own token g0
    max_new_tokens: int = 128  # default budget per request
    eos_token_id: int | list[int] | None = None  # None: the model's generation_config
    compact_waste: float = 0.5  # squeeze KV holes once they exceed this fraction of the cache
    adaptive: bool = False  # load-aware tree per step (beams or best-nodes), up to (W, L)
    policy: PolicyConfig | None = None  # candidate shapes etc. for `adaptive`
    tree_nodes: int | None = None  # N: best-nodes tree of N drafted tokens (None: W beams)
    # CUDA: wait for the device at every phase boundary so that `time_s` splits device time
    # exactly (profiling: it costs the GPU its overlap). Off, phases are host wall time and
    # device work is counted in the phase that waits for it (the draft and target handoffs).
    exact_timing: bool = False

    def __post_init__(self) -> None:
        check_int("beam_width", self.beam_width, low=1)
        check_int("beam_length", self.beam_length, low=1)
        check_int("max_new_tokens", self.max_new_tokens, low=1)
        N = check_optional_int("tree_nodes", self.tree_nodes, low=1)
        check(
            isinstance(self.adaptive, bool),
            f"adaptive must be true or false, got {self.adaptive!r}",
        )
        check_float("compact_waste", self.compact_waste, low=0.0)  # 0: squeeze every step
        check_bool("exact_timing", self.exact_timing)
        check(
            N is None or not self.adaptive,
            "tree_nodes and adaptive cannot be combined: tree_nodes fixes one best-nodes tree, "
            "adaptive picks among beams and best-nodes trees (PolicyConfig.shapes) per step; "
            "pass one of them",
        )


@dataclass
class GenerationStats:
    """τ = tokens emitted per verification step (accepted draft tokens + the bonus token)."""

    beam_width: int = 0
    beam_length: int = 0
    new_tokens: int = 0
    steps: int = 0  # verification steps this request took part in (prefill excluded)
    accepted_per_step: list[int] = field(default_factory=list)  # draft tokens accepted
    shapes: dict[str, int] = field(default_factory=dict)  # "WxL" -> steps at that tree shape
    tree_nodes: int = 0  # tree nodes this row verified over all steps (roots included)
    time_s: dict[str, float] = field(default_factory=dict)  # engine phases (whole batch)

    @property
    def tau(self) -> float:
        """Mean tokens per verification step (accepted draft tokens + the bonus token)."""
        return tau_of(sum(self.accepted_per_step), self.steps)

    @property
    def acceptance_per_depth(self) -> list[float]:
        """Fraction of steps whose draft token at depth d (1..L-1) was accepted."""
        if not self.steps:
            return []
        counts = np.asarray(self.accepted_per_step)
        return [float((counts >= d).mean()) for d in range(1, self.beam_length)]

    def summary(self) -> dict:
        return {
            "new_tokens": self.new_tokens,
            "steps": self.steps,
            "tau": round(self.tau, 4),
            "acceptance_per_depth": [round(a, 4) for a in self.acceptance_per_depth],
            "shapes": dict(self.shapes),
            "tree_nodes_per_step": round(self.tree_nodes / self.steps, 2) if self.steps else 0.0,
            "time_s": {k: round(v, 4) for k, v in self.time_s.items()},
        }


@dataclass
class Request:
    id: Hashable
    prompt: list[int]
    params: SamplingParams
    max_new_tokens: int
    generator: torch.Generator | None
    stats: GenerationStats
    tokens: list[int] = field(default_factory=list)  # emitted so far
    finish_reason: str | None = None  # "eos", "length" or "cancelled"
    _context: np.ndarray | None = field(default=None, repr=False)  # prompt + tokens, grown x2
    _filled: int = field(default=0, repr=False)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def context_capacity(self) -> int:
        """Tokens the context buffer holds before it grows again (0 before `context()`)."""
        return 0 if self._context is None else len(self._context)

    def context(self) -> torch.Tensor:
        """Prompt + emitted tokens as a host int64 tensor [T + n]: a view of a buffer that grows
        by doubling, so a step costs O(new tokens), not O(context)."""
        P, n = len(self.prompt), len(self.prompt) + len(self.tokens)
        if self._context is None or n > len(self._context):
            grown = np.empty(max(2 * n, 64), dtype=np.int64)
            if self._context is not None:
                grown[: self._filled] = self._context[: self._filled]
            self._context = grown
        if self._filled < P:
            self._context[:P] = self.prompt
            self._filled = P
        if self._filled < n:
            self._context[self._filled : n] = self.tokens[self._filled - P :]
            self._filled = n
        return torch.from_numpy(self._context[:n])


class _Timer:
    """Accumulates wall time per phase. With `exact` it first waits for the device at every
    lap (CUDA), so that device time lands in its own phase; otherwise it never waits."""

    def __init__(self, times: dict[str, float], device: torch.device, exact: bool) -> None:
        self.times, self.device, self.exact = times, device, exact
        self.t = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.exact:
            cuda_sync(self.device)
        now = time.perf_counter()
        self.times[phase] = self.times.get(phase, 0.0) + now - self.t
        self.t = now


class SpeculativeGenerator:
    """Step API for serving code: `add` requests, call `step()`, read new tokens per request.

    gen = SpeculativeGenerator(model, drafter, SpecConfig(beam_width=4, beam_length=5))
    gen.add("a", prompt_ids)                      # [T] or [1, T]
    while gen.has_unfinished():
        for rid, new_tokens in gen.step().items(): ...
    done = gen.pop_finished()                     # {rid: Request} with tokens and stats

    Threads: one thread drives `step()`; `add`, `cancel`, `pop_finished`, `has_unfinished` and
    `num_active` are safe from any thread (they wait while a step runs, so they take effect
    between steps). A second `step()` while one is running (from another thread, or from inside
    a drafter hook) raises `RedrafterError` instead of corrupting the batch.
    """

    def __init__(
        self,
        model: nn.Module,
        drafter: nn.Module,
        config: SpecConfig | None = None,
        *,
        acceptor: Acceptor | None = None,
        verifier: TreeVerifier | None = None,
    ) -> None:
        """The step's three stages, each replaceable: `drafter` proposes (any object with
        `draft`, see drafters/protocol.py), `verifier` runs the target over the packed trees
        (default: `TreeVerifier`), `acceptor` turns each verified tree into emitted tokens
        (default: `ExactAcceptor`, lossless)."""
        self.proposer = DrafterAdapter(drafter)  # refuses an object without `draft`
        check(
            acceptor is None or callable(getattr(acceptor, "accept", None)),
            f"acceptor must have an accept(step) method, got {type(acceptor).__name__}",
        )
        check(
            config is None or isinstance(config, SpecConfig),
            f"config must be a SpecConfig or None, got {type(config).__name__}",
        )
        self.target = Target(model)
        self.drafter = drafter
        self.acceptor = acceptor or ExactAcceptor()
        self.verifier = verifier or TreeVerifier()
        self._lock = threading.RLock()  # guards the request queues and batch state
        self._stepping = threading.Lock()  # held for the whole of one step()
        self.config = config or SpecConfig()
        self.eos = eos_ids(model, self.config.eos_token_id)
        self.staging = Staging(self.target.device)
        self.time_s: dict[str, float] = {}
        self.compactions = 0  # KV-cache hole squeezes (O(context), rare)
        self.proposer.check_target(model)
        if self.config.tree_nodes is not None:
            check(
                self.proposer.caps.drafts_trees,
                f"tree_nodes: {type(drafter).__name__}.draft takes no tree_nodes",
            )
        self._pending: list[Request] = []
        self._finished: dict[Hashable, Request] = {}
        self._live: set[Hashable] = set()  # ids of queued and running requests
        self.batch = Batch(self.target.device, self.staging)  # the rows being decoded
        self.policy = self._make_policy() if self.config.adaptive else None
        self._calibrated = False

    def _make_policy(self) -> ShapePolicy:
        cfg = self.config.policy or PolicyConfig()
        W, L = self.config.beam_width, self.config.beam_length
        shapes = {s for s in cfg.shapes if s[0] <= W and s[1] <= L} | {(W, L), (1, 1)}
        shapes = {s for s in shapes if self.proposer.supports(s)}
        cfg = dataclasses.replace(cfg, shapes=tuple(sorted(shapes)))
        return ShapePolicy(cfg)

    def _shape(self) -> Shape:
        """This step's (W, L) beams or (W, L, N) best-nodes tree."""
        if self.policy is None:
            W, L, N = self.config.beam_width, self.config.beam_length, self.config.tree_nodes
            return (W, L) if N is None else (W, L, N)
        if not self._calibrated:
            self.policy.calibrate(self.target, self.proposer)
            self._calibrated = True
        return self.policy.choose(len(self.batch))

    # ---- requests -----------------------------------------------------------------------
    def add(
        self,
        request_id: Hashable,
        input_ids: torch.Tensor | list[int],
        sampling: SamplingParams | None = None,
        max_new_tokens: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Queue a request; it is prefilled at the next `step()`.

        `sampling.seed` pins the request's tokens (see engine/sampling.py); otherwise sampled
        draws come from `generator` (None: torch's global RNG). Passing both is refused.
        """
        check_hashable("request_id", request_id)
        budget = check_optional_int("max_new_tokens", max_new_tokens, low=1)
        budget = self.config.max_new_tokens if budget is None else budget
        params = GREEDY if sampling is None else sampling
        check(
            isinstance(params, SamplingParams),
            f"sampling must be a SamplingParams or None, got {type(sampling).__name__}",
        )
        check(
            generator is None or isinstance(generator, torch.Generator),
            f"generator must be a torch.Generator or None, got {type(generator).__name__}",
        )
        check(
            params.seed is None or generator is None,
            "pass either sampling.seed or generator, not both: a seed pins the request's draws "
            "by itself",
        )
        prompt = self._check_prompt(input_ids, budget)
        stats = GenerationStats(self.config.beam_width, self.config.beam_length)
        with self._lock:
            check(
                request_id not in self._live,
                f"request_id {request_id!r} is already queued or running",
            )
            check(
                request_id not in self._finished,
                f"request_id {request_id!r} has finished but its result was not collected; "
                "call pop_finished() before reusing the id",
            )
            self._pending.append(Request(request_id, prompt, params, budget, generator, stats))
            self._live.add(request_id)

    def cancel(self, request_id: Hashable) -> bool:
        """Stop a queued or running request; returns whether it was found."""
        with self._lock:
            return self._cancel(request_id)

    def _cancel(self, request_id: Hashable) -> bool:
        for req in self._pending:
            if req.id == request_id:
                self._pending.remove(req)
                self._finish(req, "cancelled")
                return True
        for row, req in enumerate(self.batch.requests):
            if req.id == request_id:
                self._finish(req, "cancelled")
                self.batch.drop([row])
                return True
        return False

    def has_unfinished(self) -> bool:
        with self._lock:
            return bool(self._pending or self.batch.requests)

    def pop_finished(self) -> dict[Hashable, Request]:
        """Finished requests (EOS, budget or cancelled) since the last call."""
        with self._lock:
            done, self._finished = self._finished, {}
        return done

    @property
    def num_active(self) -> int:
        return len(self.batch)

    @property
    def num_pending(self) -> int:
        """Requests added but not prefilled yet (they join at the next step)."""
        return len(self._pending)

    # ---- one step -----------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> dict[Hashable, list[int]]:
        """Admit queued requests (prefill) and run one speculative step over the batch.

        Returns the tokens each request emitted during this step (requests that finished in
        this step included; read them with `pop_finished()`).
        """
        if not self._stepping.acquire(blocking=False):
            raise RedrafterError(
                "SpeculativeGenerator.step() is already running (in another thread, or "
                "re-entered from a drafter hook): one thread drives step(); add/cancel are safe "
                "from others"
            )
        try:
            with self._lock:
                out: dict[Hashable, list[int]] = {}
                if self._pending:
                    self._admit(out)
                if self.batch.requests:
                    self._decode(out)
                return out
        finally:
            self._stepping.release()

    def _admit(self, out: dict[Hashable, list[int]]) -> None:
        timer = _Timer(self.time_s, self.target.device, self.config.exact_timing)
        reqs, self._pending = self._pending, []
        cache, pos, hidden = self.target.prefill([r.prompt for r in reqs])
        logits = self.target.logits(hidden)[:, None]  # [b, 1, V]
        params, gens = [r.params for r in reqs], [r.generator for r in reqs]
        root = choose_tokens(logits, params, gens, start=[len(r.prompt) for r in reqs])[:, 0]
        root_host = root.tolist()
        keep = [i for i, r in enumerate(reqs) if not self._emit(r, [root_host[i]], out)]
        timer.lap("prefill")
        if not keep:
            return
        idx = cache.select(keep)
        self.batch.join(cache, pos[idx], hidden[idx], root[idx], [reqs[i] for i in keep])

    def _decode(self, out: dict[Hashable, list[int]]) -> None:
        """One speculative step over the batch: propose, pack, verify, accept, upkeep."""
        shape, B = self._shape(), len(self.batch)
        timer = _Timer(self.time_s, self.target.device, self.config.exact_timing)
        start = timer.t
        beams = self._draft(shape)  # [B, W, L] beams, [B, N, L] a best-nodes tree
        timer.lap("draft")
        beams_np = self.staging.to_host(beams, "beams")  # wait 1 of 2 (engine/transfer.py)
        timer.lap("transfer")
        tree = _core.pack_beams(beams_np, self.target.vocab_size)
        timer.lap("pack")
        hidden = self.verifier.verify(self.target, self.batch, tree, self.staging)  # [B, N, H]
        step = VerifiedStep(
            self.target,
            self.batch.requests,
            beams_np,
            tree,
            hidden,
            self.staging.to_host,
            timer.lap,
        )
        acc = self.acceptor.accept(step)
        self.proposer.observe([r.id for r in self.batch.requests], acc)
        if self.policy is not None:
            self.policy.observe(shape, acc.num_accepted, tree.num_nodes)
        timer.lap("accept")
        self.batch.advance(acc, hidden)
        timer.lap("cache")
        self._emit_step(acc, out, shape_name(shape), tree.num_nodes)
        if self.policy is not None:  # the step's whole wall time, for the policy's overhead
            self.policy.observe_time(shape, B, (time.perf_counter() - start) * 1e3)

    # ---- pieces -------------------------------------------------------------------------
    def _draft(self, shape: Shape) -> torch.Tensor:
        """Beams [B, W', L] from the drafter (W' may differ from W for multi-source drafters;
        W' = N, ragged with -1 padding, for a best-nodes tree (W, L, N)). The drafter protocol
        and its optional capabilities: drafters/protocol.py."""
        context = ids = None
        if self.proposer.caps.uses_context:
            context = [r.context() for r in self.batch.requests]
            ids = [r.id for r in self.batch.requests]
        return self.proposer.draft(
            self.batch.hidden, self.batch.root, self.target.embed, shape, context, ids
        )

    def _emit_step(self, acc: _core.Acceptance, out: dict, shape: str, nodes: np.ndarray) -> None:
        """Record the step (its tree `shape` name, `nodes` [B] verified per row) and emit."""
        done = []
        for row, req in enumerate(self.batch.requests):
            kept = int(acc.kept[row])
            req.stats.steps += 1
            req.stats.tree_nodes += int(nodes[row])
            req.stats.shapes[shape] = req.stats.shapes.get(shape, 0) + 1
            req.stats.accepted_per_step.append(kept - 1)
            if self._emit(req, acc.tokens[row, :kept].tolist(), out):
                done.append(row)
        if done:
            self.batch.drop(done)
        if self.batch.compact_if_wasteful(self.config.compact_waste):
            self.compactions += 1

    def _emit(self, req: Request, tokens: list[int], out: dict) -> bool:
        """Record new tokens (clipped at EOS / budget); returns whether the request finished."""
        budget = req.max_new_tokens - len(req.tokens)
        tokens = tokens[:budget]
        for i, t in enumerate(tokens):
            if t in self.eos:
                tokens = tokens[: i + 1]
                break
        req.tokens.extend(tokens)
        req.stats.new_tokens = len(req.tokens)
        out.setdefault(req.id, []).extend(tokens)
        if tokens and tokens[-1] in self.eos:
            self._finish(req, "eos")
        elif len(req.tokens) >= req.max_new_tokens:
            self._finish(req, "length")
        return req.finished

    def _finish(self, req: Request, reason: str) -> None:
        self._live.discard(req.id)
        self.proposer.release(req.id)
        req.finish_reason = reason
        req.stats.time_s = dict(self.time_s)
        self._finished[req.id] = req

    def _check_prompt(self, input_ids, budget: int) -> list[int]:
        if not isinstance(input_ids, torch.Tensor):
            input_ids = torch.as_tensor(input_ids, dtype=torch.long)
        ids = input_ids
        check(
            not ids.is_floating_point() and not ids.is_complex(),
            f"input_ids: expected an integer tensor, got dtype {ids.dtype}",
        )
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        check(ids.dim() == 1, f"input_ids: expected one prompt [T], got shape {tuple(ids.shape)}")
        T, V = ids.numel(), self.target.vocab_size
        check(T >= 1, "input_ids: the prompt is empty (T = 0); give at least one token")
        lo, hi = int(ids.min()), int(ids.max())
        check(lo >= 0 and hi < V, f"input_ids: token ids must be in [0, {V}), got [{lo}, {hi}]")
        limit = self.target.max_positions
        check(
            not limit or T + budget <= limit,
            f"input_ids: prompt length {T} + max_new_tokens {budget} exceeds the model's "
            f"max_position_embeddings ({limit})",
        )
        return ids.tolist()
