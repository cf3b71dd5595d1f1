"""The recurrent drafter (ReDrafter, Cheng et al., arXiv 2403.09919) and its checkpoint format.

The drafter sees the target's last hidden state h (after the final norm) and a recurrent state
s_t built from the target's own frozen input embeddings:

    s_t = SiLU(W e(g_{t-1}) + U s_{t-1} + b), s_0 = 0   (rnn=False: s_t = s_{t-1} + e(g_{t-1}))
    x   = [h ; s_t]                                     (2H wide; projected to exit_dim if != 2H)
    x   = x + SiLU(Linear(x))                           (num_layers residual blocks)
    logits = Linear(x)                                  (draft vocabulary, no bias)

The drafter stores no embeddings: callers pass the target's embedding module. A reduced draft
vocabulary (the most frequent target tokens) makes the head cheaper; verification stays exact
because the target checks every proposal.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from redrafter_rs._io import atomic_write, atomic_write_json
from redrafter_rs._validate import check_bool, check_float, check_int, check_optional_int
from redrafter_rs.errors import RedrafterError, check

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "redrafter_rs_recurrent_drafter"
FORMAT_VERSION = 1
CHECKSUM_KEY = "tensors_sha256"  # config.json: sha256 of the weights (see `tensors_sha256`)
_PROBE_ROWS = 8
_PROBE_COLS = 8


@dataclass
class DrafterConfig:
    hidden_size: int  # H: the target's hidden size
    vocab_size: int  # V: the target's vocabulary (rows of its input embedding)
    exit_dim: int | None = None  # width of the residual blocks; None = 2H (no input projection)
    num_layers: int = 1  # residual SiLU blocks
    rnn: bool = True  # recurrent state (True) or running sum of embeddings (False)
    draft_vocab_size: int | None = None  # size of the reduced head; None = full vocabulary
    target_name: str = ""  # informational: the target's model name (never a machine path)
    # Fingerprint of the target's input embeddings (a few rows), to refuse a mismatched target.
    embedding_probe: list[float] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_int("hidden_size", self.hidden_size, low=1)
        check_int("vocab_size", self.vocab_size, low=1)
        check_int("num_layers", self.num_layers, low=0)
        check_optional_int("exit_dim", self.exit_dim, low=1)
        check_bool("rnn", self.rnn)
        check_optional_int("draft_vocab_size", self.draft_vocab_size)
        check(
            isinstance(self.target_name, str),
            f"target_name must be a string, got {type(self.target_name).__name__}",
        )
        # checkpoints written before 2026-12-06 may hold a machine's cache path here
        self.target_name = portable_model_name(self.target_name)
        probe = self.embedding_probe
        if probe is not None:
            want = _PROBE_ROWS * _PROBE_COLS
            check(
                isinstance(probe, list) and len(probe) == want,
                f"embedding_probe must be a list of {want} numbers or null, got {probe!r:.80}",
            )
            for x in probe:
                check_float("embedding_probe value", x)
        if self.exit_dim is None:
            self.exit_dim = 2 * self.hidden_size
        if self.draft_vocab_size is not None:
            check(
                0 < self.draft_vocab_size <= self.vocab_size,
                f"draft_vocab_size must be in [1, vocab_size={self.vocab_size}], "
                f"got {self.draft_vocab_size}",
            )

    @property
    def head_size(self) -> int:
        return self.draft_vocab_size or self.vocab_size


def embedding_probe(weight: torch.Tensor) -> list[float]:
    """A small, dtype-robust fingerprint of an embedding table [V, H]: 8 rows x 8 columns."""
    vocab = weight.shape[0]
    rows = torch.linspace(0, vocab - 1, _PROBE_ROWS).round().long().to(weight.device)
    sample = weight.detach()[rows, :_PROBE_COLS].float().cpu()  # [8, 8]
    return [round(float(x), 6) for x in sample.flatten()]


# Fingerprint tolerance: loose enough for the same target in float16 or bfloat16 (bfloat16
# rounds by up to 2^-9 relative, beyond an absolute 2e-3 for entries above ~1), far too tight
# for another model's embeddings to pass.
PROBE_RTOL = 2e-2
PROBE_ATOL = 2e-3


def target_mismatch(
    weight: torch.Tensor, vocab_size: int, hidden_size: int, probe: list[float] | None
) -> str | None:
    """Whether the embedding table `weight` [V, H] is the target's that something (a drafter,
    a teacher cache) was made for, given the recorded shape and fingerprint `probe` (None: not
    recorded): None when it is, else "shape" or "fingerprint", the first difference found."""
    if tuple(weight.shape) != (vocab_size, hidden_size):
        return "shape"
    if probe is not None:
        got = torch.tensor(embedding_probe(weight))
        if not torch.allclose(got, torch.tensor(probe), rtol=PROBE_RTOL, atol=PROBE_ATOL):
            return "fingerprint"
    return None


def target_embedding(model: nn.Module) -> nn.Module:
    """The target's input embedding module (HF `get_input_embeddings`)."""
    embed = model.get_input_embeddings()
    check(embed is not None, "target model has no input embeddings (get_input_embeddings())")
    return embed


def portable_model_name(name: str) -> str:
    """A model name without machine paths: a local directory (absolute, `~`, `.`-relative or
    existing) becomes its last component; a hub id such as `org/model` stays as it is."""
    if not name:
        return name
    path = Path(name).expanduser()
    local = path.is_absolute() or name.startswith((".", "~")) or path.exists()
    return path.name if local and path.name else name


def _target_name(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    name = str(getattr(cfg, "_name_or_path", "") or getattr(cfg, "model_type", "") or "")
    return portable_model_name(name)


class ResBlock(nn.Module):
    """x + SiLU(Linear(x))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


class RecurrentDrafter(nn.Module):
    """ReDrafter's RNN draft head. See the module docstring for the equations."""

    def __init__(self, config: DrafterConfig) -> None:
        super().__init__()
        self.config = config
        H, D = config.hidden_size, config.exit_dim
        self.rnn_w = nn.Linear(H, H, bias=False)
        self.rnn_u = nn.Linear(H, H, bias=True)
        self.input_proj = nn.Linear(2 * H, D) if D != 2 * H else nn.Identity()
        self.blocks = nn.ModuleList(ResBlock(D) for _ in range(config.num_layers))
        self.head = nn.Linear(D, config.head_size, bias=False)
        # draft-vocabulary index -> target token id (identity for a full-vocabulary head)
        self.register_buffer("draft_to_target", torch.arange(config.head_size), persistent=True)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=1.0 / math.sqrt(module.in_features))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # Start the residual blocks near identity so an untrained drafter is stable.
        for block in self.blocks:
            nn.init.zeros_(block.linear.weight)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def for_target(
        cls,
        model: nn.Module,
        *,
        exit_dim: int | None = None,
        num_layers: int = 1,
        rnn: bool = True,
        draft_vocab: torch.Tensor | None = None,
    ) -> RecurrentDrafter:
        """A fresh (untrained) drafter sized for `model`.

        `draft_vocab`: target token ids of a reduced head (None: the full vocabulary).
        """
        weight = target_embedding(model).weight
        config = DrafterConfig(
            hidden_size=weight.shape[1],
            vocab_size=weight.shape[0],
            exit_dim=exit_dim,
            num_layers=num_layers,
            rnn=rnn,
            draft_vocab_size=None if draft_vocab is None else int(draft_vocab.numel()),
            target_name=_target_name(model),
            embedding_probe=embedding_probe(weight),
        )
        drafter = cls(config)
        if draft_vocab is not None:
            drafter.set_draft_vocab(draft_vocab)
        return drafter.to(device=weight.device)

    def set_draft_vocab(self, token_ids: torch.Tensor) -> None:
        """Set the target ids of the reduced head's outputs (distinct, in [0, vocab_size))."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        check(
            ids.numel() == self.config.head_size,
            f"draft vocabulary: expected {self.config.head_size} ids, got {ids.numel()}",
        )
        check(
            bool(((ids >= 0) & (ids < self.config.vocab_size)).all()),
            f"draft vocabulary: ids must be in [0, {self.config.vocab_size})",
        )
        check(ids.unique().numel() == ids.numel(), "draft vocabulary: ids must be distinct")
        self.draft_to_target.copy_(ids.to(self.draft_to_target.device))

    # ---- the network --------------------------------------------------------------------
    def rnn_step(self, state: torch.Tensor, token_embedding: torch.Tensor) -> torch.Tensor:
        """s_t from s_{t-1} [..., H] and e(g_{t-1}) [..., H]."""
        if self.config.rnn:
            return F.silu(self.rnn_w(token_embedding) + self.rnn_u(state))
        return state + token_embedding

    def logits(self, hidden: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits [..., V'] from h [..., H] and s [..., H]."""
        x = self.input_proj(torch.cat([hidden, state], dim=-1))  # [..., D]
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def forward(self, hidden: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.logits(hidden, state)

    # ---- drafting (the engine's entry point) --------------------------------------------
    def draft(
        self,
        hidden: torch.Tensor,
        root: torch.Tensor,
        *,
        embed: nn.Module,
        beam_width: int,
        beam_length: int,
        context: list[torch.Tensor] | None = None,
        tree_nodes: int | None = None,
    ) -> torch.Tensor:
        """Beams [B, W, L] starting with `root` [B], from h [B, H] (see `beam_search`); with
        `tree_nodes` N, the N best nodes as beams [B, N, L] that may end early (-1 padding;
        see `best_nodes_search`)."""
        from redrafter_rs.drafters.search import beam_search, best_nodes_search

        if tree_nodes is not None:
            return best_nodes_search(self, embed, hidden, root, tree_nodes, beam_width, beam_length)
        return beam_search(self, embed, hidden, root, beam_width, beam_length)

    # ---- compatibility ------------------------------------------------------------------
    def check_target(self, model: nn.Module) -> None:
        """Raise `RedrafterError` unless `model` is the target this drafter was made for."""
        weight = target_embedding(model).weight
        cfg = self.config
        why = target_mismatch(weight, cfg.vocab_size, cfg.hidden_size, cfg.embedding_probe)
        if why == "shape":
            vocab, hidden = weight.shape
            raise RedrafterError(
                f"drafter/target mismatch: the drafter was made for a target with vocab_size="
                f"{cfg.vocab_size}, hidden_size={cfg.hidden_size} "
                f"({cfg.target_name or 'unnamed'}), "
                f"but the given model has vocab_size={vocab}, hidden_size={hidden}"
            )
        if why == "fingerprint":
            raise RedrafterError(
                "drafter/target mismatch: the model's input embeddings differ from those the "
                f"drafter was made with (fingerprint mismatch; drafter target: "
                f"{cfg.target_name or 'unnamed'}). Use the drafter trained for this model."
            )

    # ---- checkpoints --------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write `model.safetensors` and `config.json` into `directory`, each atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        check(
            not directory.exists() or directory.is_dir(),
            f"save_pretrained: {directory} exists and is not a directory",
        )
        tensors = {
            k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
            .detach()
            .contiguous()
            .cpu()
            for k, v in self.state_dict().items()
        }
        meta = {"format": "pt", "model_type": MODEL_TYPE}
        config = {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION, **asdict(self.config)}
        config[CHECKSUM_KEY] = tensors_sha256(tensors)
        try:  # weights first: a crash in between leaves a checksum mismatch, caught on load
            atomic_write(
                directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata=meta)
            )
            atomic_write_json(directory / CONFIG_NAME, config)
        except OSError as e:
            raise RedrafterError(f"save_pretrained: cannot write to {directory} ({e})") from e

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        target: nn.Module | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> RecurrentDrafter:
        """Load a drafter; with `target`, refuse one made for a different model."""
        directory = Path(directory)
        raw = _read_raw(directory / CONFIG_NAME)
        drafter = cls(_config_from_raw(raw, directory / CONFIG_NAME))
        _load_weights(drafter, directory / WEIGHTS_NAME, raw.get(CHECKSUM_KEY))
        if target is not None:
            drafter.check_target(target)
            device = device or target_embedding(target).weight.device
        return drafter.to(device=device, dtype=dtype).eval()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors in name order: each name, dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _read_raw(path: Path) -> dict:
    check(path.is_file(), f"drafter checkpoint: {path} not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RedrafterError(f"drafter checkpoint: {path} is not valid JSON ({e})") from e
    check(isinstance(raw, dict), f"drafter checkpoint: {path} must hold a JSON object")
    check(
        raw.get("model_type") == MODEL_TYPE,
        f"drafter checkpoint: {path} has model_type={raw.get('model_type')!r}, "
        f"expected {MODEL_TYPE!r}",
    )
    version = raw.get("format_version", 0)
    check(
        isinstance(version, int) and not isinstance(version, bool) and version >= 0,
        f"drafter checkpoint: {path}: format_version must be a non-negative integer, "
        f"got {version!r}",
    )
    check(
        version <= FORMAT_VERSION,
        f"drafter checkpoint: {path} has format_version {version}, newer than "
        f"this redrafter-rs understands ({FORMAT_VERSION}); upgrade redrafter-rs",
    )
    checksum = raw.get(CHECKSUM_KEY)
    check(
        checksum is None or (isinstance(checksum, str) and len(checksum) == 64),
        f"drafter checkpoint: {path}: {CHECKSUM_KEY} must be a 64-character hex string",
    )
    return raw


def _config_from_raw(raw: dict, path: Path) -> DrafterConfig:
    fields = DrafterConfig.__dataclass_fields__
    required = [k for k, f in fields.items() if f.default is MISSING]
    missing = [k for k in required if k not in raw]
    check(not missing, f"drafter checkpoint: {path} is missing config fields {missing}")
    try:
        return DrafterConfig(**{k: v for k, v in raw.items() if k in fields})
    except RedrafterError as e:
        raise RedrafterError(f"drafter checkpoint: {path}: {e}") from None


def read_config(path: str | Path) -> DrafterConfig:
    """The `DrafterConfig` of a checkpoint's config.json, validated."""
    path = Path(path)
    return _config_from_raw(_read_raw(path), path)


def _load_weights(drafter: RecurrentDrafter, path: Path, checksum: str | None = None) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check(path.is_file(), f"drafter checkpoint: {path} not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RedrafterError(f"drafter checkpoint: {path} is corrupt or unreadable ({e})") from e
    expected = drafter.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    check(not missing, f"drafter checkpoint: {path} is missing tensors {missing}")
    check(not unexpected, f"drafter checkpoint: {path} has unexpected tensors {unexpected}")
    for name, tensor in state.items():
        want = tuple(expected[name].shape)
        check(
            tuple(tensor.shape) == want,
            f"drafter checkpoint: tensor {name!r} has shape {tuple(tensor.shape)}, "
            f"expected {want} from config.json",
        )
    if checksum is None:
        warnings.warn(
            f"drafter checkpoint: {path.parent} has no {CHECKSUM_KEY} in config.json (written "
            "by an older redrafter-rs), so its weights cannot be verified; save_pretrained() "
            "again to add one",
            stacklevel=3,
        )
    else:
        check(
            tensors_sha256(state) == checksum,
            f"drafter checkpoint: {path} does not match the {CHECKSUM_KEY} in config.json: the "
            "weights are corrupt, or config.json and the weights come from different saves",
        )
    for name, tensor in state.items():
        check(
            not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()),
            f"drafter checkpoint: tensor {name!r} holds NaN or infinite values",
        )
    drafter.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    ids = drafter.draft_to_target
    check(
        bool(((ids >= 0) & (ids < drafter.config.vocab_size)).all()),
        f"drafter checkpoint: {path}: draft_to_target ids must be in "
        f"[0, {drafter.config.vocab_size})",
    )
