"""Type stubs for the compiled Rust core `redrafter_rs._core` (see crates/redrafter-py)."""

import numpy as np
import numpy.typing as npt

__version__: str

class RedrafterError(ValueError):
    """Invalid input to a redrafter-rs operation (shape, dtype, token range, sizes)."""

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
    """Pack beams [B, W, L] into a prefix tree; beams sharing a prefix share nodes."""

def accept(tree: Tree, beams: npt.NDArray[np.int64], choice: npt.NDArray[np.int64]) -> Acceptance:
    """Walk the tree following the target's choice [B, N]; longest matching prefix + bonus."""
