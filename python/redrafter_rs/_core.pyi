"""Type stubs for the compiled Rust core `redrafter_rs._core` (see crates/redrafter-py)."""

import os
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__version__: str

RETRIEVAL_DEFAULTS: dict[str, dict[str, int]]
"""The retrieval defaults, defined once in the Rust core (`QueryParams::DEFAULT`, `DATASTORE`,
`DRAFT`, `UNCAPPED`), by call then argument: "query" (`SuffixAutomaton.query`, `retrieve`),
"datastore_query" (`Datastore.query`), "count" (the `count` methods' `cap`) and "draft"
(`RetrievalConfig`'s `min_match`, `count_cap`, `max_levels`)."""

class RedrafterError(ValueError):
    """Invalid input to a redrafter-rs operation (shape, dtype, token range, sizes, a negative
    integer argument, or a size past a documented limit)."""

class Tree:
    """Packed prefix tree of a batch of beams (result of `pack_beams`)."""

    @property
    def batch(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def max_nodes(self) -> int: ...
    @property
    def tokens(self) -> npt.NDArray[np.int64]:
        """[B, N] packed unique-prefix tokens (padding: 0)."""
    @property
    def depth(self) -> npt.NDArray[np.int64]:
        """[B, N] depth of each node (root: 0)."""
    @property
    def parent(self) -> npt.NDArray[np.int64]:
        """[B, N] parent node (root and padding: -1)."""
    @property
    def mask(self) -> npt.NDArray[np.bool_]:
        """[B, N, N] mask[b, i, j]: node j is node i or one of its ancestors."""
    @property
    def unpacker(self) -> npt.NDArray[np.int64]:
        """[B, W, L] node index of beams[b, w, k]."""
    @property
    def num_nodes(self) -> npt.NDArray[np.int64]:
        """[B] real nodes per row."""

class Acceptance:
    """Result of `accept`."""

    @property
    def best_beam(self) -> npt.NDArray[np.int64]:
        """[B] smallest beam index holding the accepted path."""
    @property
    def num_accepted(self) -> npt.NDArray[np.int64]:
        """[B] accepted draft tokens (the root is not counted)."""
    @property
    def path(self) -> npt.NDArray[np.int64]:
        """[B, L] accepted node indices, root first, padded with -1."""
    @property
    def tokens(self) -> npt.NDArray[np.int64]:
        """[B, L] tokens to emit: accepted drafts then the bonus token, padded with -1."""
    @property
    def bonus(self) -> npt.NDArray[np.int64]:
        """[B] the target's token after the accepted path."""
    @property
    def kv_gather(self) -> npt.NDArray[np.int64]:
        """[B, M] tree nodes to keep in the KV cache (M = longest path; short rows repeat)."""
    @property
    def kv_valid(self) -> npt.NDArray[np.bool_]:
        """[B, M] whether kept slot j of row b holds an accepted token."""
    @property
    def kept(self) -> npt.NDArray[np.int64]:
        """[B] tokens kept per row (num_accepted + 1)."""
    @property
    def last_node(self) -> npt.NDArray[np.int64]:
        """[B] node of the last accepted token (its hidden state is the next h)."""

def pack_beams(beams: npt.NDArray[np.int64], vocab_size: int | None = None) -> Tree:
    """Pack beams [B, W, L] into a prefix tree; beams sharing a prefix share nodes. A beam may
    end early: -1 from some depth >= 1 on (no nodes; never accepted past its end).

    `vocab_size` must be >= 1. A tree whose [B, N, N] mask would hold more than 2**30 elements
    (MAX_MASK_ELEMENTS) raises RedrafterError naming the limit and the requested size."""

def accept(tree: Tree, beams: npt.NDArray[np.int64], choice: npt.NDArray[np.int64]) -> Acceptance:
    """Walk the tree following the target's choice [B, N]; longest matching prefix + bonus."""

class Candidates:
    """Retrieval candidates, padded with -1 (result of `query` / `retrieve`).

    Single query: `tokens` [K', length], `lengths` / `match_len` / `count` [K'], `num` 0-d.
    Batch (`retrieve`): `tokens` [B, K, length], the others [B, K] (0 past a row's `num`),
    `num` [B].
    """

    @property
    def tokens(self) -> npt.NDArray[np.int64]:
        """Candidate tokens, padded with -1."""
    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        """Real tokens per candidate."""
    @property
    def match_len(self) -> npt.NDArray[np.int64]:
        """Length of the context suffix each candidate continues."""
    @property
    def count(self) -> npt.NDArray[np.int64]:
        """Occurrences of (matched suffix + first token), capped at `count_cap`."""
    @property
    def num(self) -> npt.NDArray[np.int64]:
        """Candidates per row."""

class SuffixAutomaton:
    """Incremental suffix automaton over one request's tokens (amortised O(1) per token)."""

    def __init__(self, tokens: npt.NDArray[np.int64] | None = None) -> None: ...
    def extend(self, tokens: npt.NDArray[np.int64]) -> None:
        """Append tokens (int64 [T], all >= 0)."""
    def query(
        self,
        k: int = ...,
        length: int = ...,
        *,
        context: npt.NDArray[np.int64] | None = None,
        min_match: int = ...,
        count_cap: int = ...,
        max_levels: int = ...,
    ) -> Candidates:
        """Up to `k` continuations of the text's end (or of `context`'s end), ranked by
        (match length, frequency); continuations of the text's own end repeat periodically.
        Every integer must be >= 0 (RedrafterError otherwise), and `k * length` at most 2**24
        (MAX_QUERY_TOKENS). Defaults: RETRIEVAL_DEFAULTS["query"]."""
    def count(self, pattern: npt.NDArray[np.int64], cap: int = ...) -> int:
        """Occurrences of `pattern` in the text, at most `cap` (>= 0; default
        RETRIEVAL_DEFAULTS["count"]["cap"])."""
    def tokens(self) -> npt.NDArray[np.int64]:
        """The indexed tokens (a copy)."""
    @property
    def num_states(self) -> int: ...
    def __len__(self) -> int: ...

class Datastore:
    """Shared, read-only retrieval datastore: a frozen suffix automaton over a token corpus,
    stored as a versioned, checksummed binary file."""

    @staticmethod
    def build(tokens: npt.NDArray[np.int64]) -> Datastore:
        """Index a corpus (int64 [T]); negative ids separate documents."""
    @staticmethod
    def load(path: str | os.PathLike[str]) -> Datastore:
        """Read a datastore file (RedrafterError if missing, foreign, truncated or corrupt)."""
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the file atomically."""
    def query(
        self,
        context: npt.NDArray[np.int64],
        k: int = ...,
        length: int = ...,
        *,
        min_match: int = ...,
        count_cap: int = ...,
        max_levels: int = ...,
    ) -> Candidates:
        """Up to `k` continuations of `context` from the corpus. Every integer must be >= 0
        (RedrafterError otherwise), and `k * length` at most 2**24 (MAX_QUERY_TOKENS).
        Defaults: RETRIEVAL_DEFAULTS["datastore_query"]."""
    def count(self, pattern: npt.NDArray[np.int64], cap: int = ...) -> int:
        """Occurrences of `pattern` in the corpus, at most `cap` (>= 0; default
        RETRIEVAL_DEFAULTS["count"]["cap"])."""
    @property
    def num_tokens(self) -> int: ...
    @property
    def num_docs(self) -> int: ...
    @property
    def num_states(self) -> int: ...
    def __len__(self) -> int: ...

def retrieve(
    automata: Sequence[SuffixAutomaton],
    k: int,
    length: int,
    *,
    datastore: Datastore | None = None,
    min_match: int = ...,
    count_cap: int = ...,
    max_levels: int = ...,
) -> Candidates:
    """Candidates for every row of a decode step in one call: tokens [B, k, length]; own text
    and datastore candidates merged by (match length, count). Every integer must be >= 0
    (RedrafterError otherwise), and `B * k * length` at most 2**24 (MAX_QUERY_TOKENS).
    An automaton may fill several rows. Defaults: RETRIEVAL_DEFAULTS["query"]."""

def linear_f32(
    x: npt.NDArray[np.float32],
    w: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32] | None,
    out: npt.NDArray[np.float32],
) -> None:
    """`out[:] = x @ w.T + bias` (like `F.linear`): x float32 [M, K], w float32 [N, K], bias
    float32 [N] or None, out writable float32 [M, N], all C-contiguous. The GIL is released.
    A row's result is bitwise independent of M, of the other rows and of the thread count."""

def linear_bf16w(
    x: npt.NDArray[np.float32],
    w_bits: npt.NDArray[np.uint16],
    bias: npt.NDArray[np.float32] | None,
    out: npt.NDArray[np.float32],
) -> None:
    """`linear_f32` with bf16 weights given as uint16 bits [N, K]
    (`weight.view(torch.int16).numpy().view(np.uint16)`); bitwise equal to `linear_f32` on
    the widened weights."""

def set_kernel_threads(n: int, spin_us: int | None = None) -> None:
    """Threads for `linear_*` (n >= 1; default: all CPUs). `spin_us`: how long an idle worker
    spins waiting for the next call before it sleeps (default 200)."""

def kernel_threads() -> int:
    """Threads `linear_*` run on."""

def kernel_isa() -> str:
    """Instruction set of the kernels: "avx2-fma" or "portable"."""
