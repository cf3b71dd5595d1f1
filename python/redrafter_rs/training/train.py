"""Knowledge-distillation training of a recurrent drafter from cached teacher outputs.

For an anchor position t and draft depth i = 1..L-1 (L includes the root token, as in the
engine), the drafter sees h_t and s_i, where s_1 = rnn_step(0, e(x_{t+1})) and
s_i = rnn_step(s_{i-1}, e(x_{t+i})); its depth-i distribution predicts x_{t+i+1} and is trained
towards the target's distribution at position t+i (top-k logits, restricted to the draft
vocabulary and renormalised): loss = sum_i KL(p_target(t+i) || q_drafter(t, i)), averaged over
anchors.

`train_drafter` runs single-process or under `torchrun` (DDP: gloo on CPU, nccl on GPU). The
training state lives in one file, `<out>/checkpoint.pt`, replaced atomically every
`ckpt_every` steps, at the end, and on Ctrl-C; `resume=True` continues from it bit-for-bit (the
data order is a pure function of seed and step). `<out>/drafter/` holds the latest drafter in
the `from_pretrained` format. `init_from` fine-tunes an existing drafter (e.g. the shipped one)
instead of starting from random weights.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from redrafter_rs._io import atomic_write, atomic_write_json
from redrafter_rs.drafters.recurrent import RecurrentDrafter, target_embedding
from redrafter_rs.errors import RedrafterError, check
from redrafter_rs.training.teacher import load_chunks

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
# Settings a resumed run must share with the checkpoint (architecture and data order).
_RESUME_KEYS = (
    "exit_dim",
    "num_layers",
    "rnn",
    "draft_vocab_size",
    "beam_length",
    "batch_size",
    "seed",
    "init_head_from_target",
    "freeze_head",
    "init_from",
    "hard_weight",
)
_ARCH_KEYS = ("exit_dim", "num_layers", "rnn", "draft_vocab_size")


@dataclass
class TrainConfig:
    exit_dim: int | None = None  # residual width; None = 2H
    num_layers: int = 1
    rnn: bool = True
    draft_vocab_size: int | None = 8192  # reduced head (most likely tokens under the teacher)
    beam_length: int = 5  # L: trains depths 1..L-1
    steps: int = 1000
    batch_size: int = 256  # anchors per step and process
    lr: float = 2e-3
    hard_weight: float = 0.0  # + this x cross-entropy on the teacher's top-1 token, per depth
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    init_head_from_target: bool = True  # head rows from the target's LM head (needs exit_dim=H)
    freeze_head: bool = False  # keep those rows fixed (fewer trainable weights, less overfitting)
    init_from: str | None = None  # warm start: a drafter directory (its architecture is kept)
    ckpt_every: int = 200
    eval_every: int = 0  # steps between τ evaluations with the real engine (0: never)
    log_every: int = 10

    def __post_init__(self) -> None:
        check(self.beam_length >= 2, f"beam_length must be >= 2, got {self.beam_length}")
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.hard_weight >= 0, f"hard_weight must be >= 0, got {self.hard_weight}")

    @property
    def depths(self) -> int:
        return self.beam_length - 1


@dataclass
class TrainResult:
    step: int
    metrics: dict  # last logged: loss, kl, acc_per_depth, tokens_per_s
    history: list[dict]  # every log line and eval
    drafter: RecurrentDrafter
    interrupted: bool = False


# ---- data -------------------------------------------------------------------------------------
class AnchorData:
    """Cached teacher outputs, served as batches of (h_t, x_{t+1..t+D}, teacher at t+1..t+D)."""

    def __init__(self, tensors: dict[str, torch.Tensor], depths: int) -> None:
        self.hidden = tensors["hidden"]  # [N, H] fp16
        self.next_token = tensors["next_token"].long()  # [N]
        self.topk_ids = tensors["topk_ids"].long()  # [N, K]
        self.topk_logits = tensors["topk_logits"]  # [N, K] fp16
        offsets = tensors["seq_offsets"]  # [S + 1]
        lengths = offsets[1:] - offsets[:-1]
        self.seq_end = torch.repeat_interleave(offsets[1:], lengths)  # [N]
        self.depths = depths

    def __len__(self) -> int:
        return int(self.next_token.numel())

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Anchors idx [B] -> hidden [B, H], tokens [B, D], topk [B, D, K], valid [B, D]."""
        steps = torch.arange(self.depths)  # [D]
        inputs = idx[:, None] + steps  # x_{t+i} is next_token[t+i-1], i = 1..D
        teacher = inputs + 1  # teacher distribution at t+i
        valid = teacher < self.seq_end[idx][:, None]  # [B, D]
        inputs = inputs.clamp(max=len(self) - 1)
        teacher = teacher.clamp(max=len(self) - 1)
        return {
            "hidden": self.hidden[idx].float(),
            "tokens": self.next_token[inputs],
            "topk_ids": self.topk_ids[teacher],
            "topk_logits": self.topk_logits[teacher].float(),
            "valid": valid,
        }

    def token_mass(self, vocab_size: int) -> torch.Tensor:
        """Teacher probability mass per token id [V] (top-k, summed over all positions)."""
        mass = torch.zeros(vocab_size)
        step = 65536
        for lo in range(0, len(self), step):
            probs = torch.softmax(self.topk_logits[lo : lo + step].float(), dim=-1)
            mass.index_add_(0, self.topk_ids[lo : lo + step].flatten(), probs.flatten())
        return mass


def choose_draft_vocab(
    data: AnchorData, vocab_size: int, size: int, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """The `size` token ids with the most teacher probability mass (most frequent first),
    leaving out the ids in `exclude`."""
    check(size <= vocab_size, f"draft_vocab_size {size} exceeds the vocabulary ({vocab_size})")
    mass = data.token_mass(vocab_size)
    mass += torch.linspace(1e-9, 0, vocab_size)  # ties: lower ids first, deterministically
    if exclude is not None:
        mass[exclude] = -1.0  # below any mass
    return mass.argsort(descending=True)[:size]


def anchor_order(n: int, batch: int, world: int, rank: int, step: int, seed: int) -> torch.Tensor:
    """This rank's anchors for `step`: a seeded per-epoch permutation, no sample repeated."""
    per_step = batch * world
    check(n >= per_step, f"{n} teacher positions cannot fill one step of {per_step} anchors")
    steps_per_epoch = n // per_step
    epoch, within = divmod(step, steps_per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    lo = within * per_step + rank * batch
    return perm[lo : lo + batch]


# ---- the model side ---------------------------------------------------------------------------
class DepthUnroll(nn.Module):
    """Teacher-forced drafter over depths: logits [B, D, V'] from h [B, H], e(x) [B, D, H].

    A module (not a function) so that DDP sees the forward and synchronises the gradients.
    """

    def __init__(self, drafter: RecurrentDrafter) -> None:
        super().__init__()
        self.drafter = drafter

    def forward(self, hidden: torch.Tensor, token_emb: torch.Tensor) -> torch.Tensor:
        state = hidden.new_zeros(hidden.shape)  # [B, H]
        states = []
        for i in range(token_emb.shape[1]):
            state = self.drafter.rnn_step(state, token_emb[:, i])  # [B, H]
            states.append(state)
        states = torch.stack(states, dim=1)  # [B, D, H]
        return self.drafter.logits(hidden[:, None].expand_as(states), states)  # [B, D, V']


def teacher_targets(
    topk_ids: torch.Tensor, topk_logits: torch.Tensor, target_to_draft: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher top-k restricted to the draft vocabulary.

    Returns draft indices [B, D, K] (0 where absent), probabilities [B, D, K] (renormalised over
    the present tokens; 0 where absent) and the mass kept per row [B, D].
    """
    draft_idx = target_to_draft[topk_ids]  # [B, D, K], -1 = not in the draft vocabulary
    present = draft_idx >= 0
    probs = torch.softmax(topk_logits, dim=-1) * present  # [B, D, K]
    kept = probs.sum(-1)  # [B, D]
    probs = probs / kept.clamp(min=1e-12)[..., None]
    return draft_idx.clamp(min=0), probs, kept


def _depth_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-depth mean [D] of x [B, D] over the anchors where weight [B, D] is 1."""
    return (x * weight).sum(0) / weight.sum(0).clamp(min=1)


def distill_loss(
    logits: torch.Tensor,
    batch: dict[str, torch.Tensor],
    target_to_draft: torch.Tensor,
    hard_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Summed-over-depths loss (mean over anchors) and per-depth stats: kl, correct, n (each [D]).

    The loss is KL(teacher || drafter) per depth, plus `hard_weight` times the cross-entropy of
    the teacher's top-1 token (the one greedy verification accepts) where the draft vocabulary
    has it.
    """
    draft_idx, probs, kept = teacher_targets(
        batch["topk_ids"], batch["topk_logits"], target_to_draft
    )
    weight = (batch["valid"] & (kept > 0)).float()  # [B, D]
    log_q = torch.log_softmax(logits.float(), dim=-1)  # [B, D, V']
    log_q_k = log_q.gather(-1, draft_idx)  # [B, D, K]
    log_p = torch.where(probs > 0, probs.clamp(min=1e-12).log(), torch.zeros_like(probs))
    kl = (probs * (log_p - log_q_k)).sum(-1)  # [B, D]
    kl_per_depth = _depth_mean(kl, weight)  # [D]
    top1 = target_to_draft[batch["topk_ids"][..., 0]]  # [B, D], -1 = not in the draft vocabulary
    loss = kl_per_depth.sum()
    if hard_weight:
        nll = -log_q.gather(-1, top1.clamp(min=0)[..., None]).squeeze(-1)  # [B, D]
        hard = (batch["valid"] & (top1 >= 0)).float()  # [B, D]
        loss = loss + hard_weight * _depth_mean(nll, hard).sum()
    with torch.no_grad():  # top-1 agreement with the target's own argmax
        correct = (logits.argmax(-1) == top1).float()
        correct = (correct * batch["valid"]).sum(0)  # [D]
    stats = {"kl": kl_per_depth.detach(), "correct": correct, "n": batch["valid"].float().sum(0)}
    return loss, stats


def init_head_from_target(drafter: RecurrentDrafter, model: nn.Module) -> bool:
    """Copy the target's LM-head rows of the draft vocabulary into the drafter head."""
    head = model.get_output_embeddings()
    if head is None or tuple(head.weight.shape[1:]) != (drafter.config.exit_dim,):
        return False
    with torch.no_grad():
        rows = head.weight[drafter.draft_to_target.to(head.weight.device)]
        drafter.head.weight.copy_(rows.to(drafter.head.weight))
    return True


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


# ---- distributed ------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group if launched by torchrun (gloo on CPU, nccl on CUDA)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def _all_reduce(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        import torch.distributed as dist

        dist.all_reduce(x)
    return x


def _broadcast_module(module: nn.Module, d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


# ---- checkpoints ------------------------------------------------------------------------------
def save_checkpoint(out_dir: Path, state: dict, drafter: RecurrentDrafter) -> None:
    """`checkpoint.pt` (training state) and `drafter/` (from_pretrained format), each atomic."""
    atomic_write(out_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))
    drafter.save_pretrained(out_dir / "drafter")
    summary = {k: state[k] for k in ("step", "config", "data")}
    summary["last"] = state["history"][-1] if state["history"] else {}
    atomic_write_json(out_dir / "train_state.json", summary)


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, or a `RedrafterError` saying why it cannot be used."""
    path = Path(path)
    check(path.is_file(), f"training checkpoint {path} not found (nothing to resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise RedrafterError(f"training checkpoint {path} is corrupt or unreadable ({e})") from e
    check(
        isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT,
        f"training checkpoint {path} is not a redrafter training checkpoint "
        f"(format {state.get('format') if isinstance(state, dict) else type(state).__name__})",
    )
    return state


def check_resumable(state: dict, cfg: TrainConfig, data_info: dict, path: Path) -> None:
    """Refuse a checkpoint whose architecture, data order or data differ from this run."""
    saved = {**asdict(TrainConfig()), **state["config"]}  # older checkpoints lack newer keys
    diff = [
        f"{k}: checkpoint {saved[k]!r} vs now {getattr(cfg, k)!r}"
        for k in _RESUME_KEYS
        if saved[k] != getattr(cfg, k)
    ]
    check(not diff, f"training checkpoint {path} does not match this run: " + "; ".join(diff))
    for key in ("positions", "world_size"):
        check(
            state["data"].get(key) == data_info[key],
            f"training checkpoint {path} was made with {key}={state['data'].get(key)}, "
            f"this run has {key}={data_info[key]}",
        )


def _drafter_from_state(state: dict, model: nn.Module) -> RecurrentDrafter:
    from redrafter_rs.drafters.recurrent import DrafterConfig

    drafter = RecurrentDrafter(DrafterConfig(**state["drafter_config"]))
    try:
        drafter.load_state_dict(state["drafter"])
    except RuntimeError as e:
        raise RedrafterError(f"training checkpoint: drafter weights do not fit ({e})") from e
    drafter.check_target(model)
    return drafter


def export_drafter(
    out_dir: str | Path, dest: str | Path, dtype: torch.dtype = torch.float16
) -> RecurrentDrafter:
    """Write the checkpoint's drafter to `dest` (from_pretrained format) in `dtype`."""
    from redrafter_rs.drafters.recurrent import DrafterConfig

    state = load_checkpoint(Path(out_dir) / CHECKPOINT)
    drafter = RecurrentDrafter(DrafterConfig(**state["drafter_config"]))
    drafter.load_state_dict(state["drafter"])
    drafter.save_pretrained(dest, dtype=dtype)
    return drafter


# ---- evaluation -------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_tau(
    model: nn.Module,
    drafter: RecurrentDrafter,
    prompts: list[torch.Tensor],
    beam_width: int = 4,
    beam_length: int = 5,
    max_new_tokens: int = 64,
) -> float:
    """τ (tokens per verification step) of the real engine over `prompts` ([1, T] each)."""
    from redrafter_rs._common import tau_of
    from redrafter_rs.generate import generate

    was_training = drafter.training
    drafter.eval()
    accepted = steps = 0
    for ids in prompts:
        out = generate(
            model,
            drafter,
            ids,
            max_new_tokens=max_new_tokens,
            beam_width=beam_width,
            beam_length=beam_length,
        )
        accepted += sum(out.stats.accepted_per_step)
        steps += out.stats.steps
    drafter.train(was_training)
    return tau_of(accepted, steps)


# ---- the training loop ------------------------------------------------------------------------
def train_drafter(
    model: nn.Module,
    teacher_cache: str | Path | list[str | Path],
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    eval_prompts: list[torch.Tensor] | None = None,
    stop_after: int | None = None,
    time_budget_s: float | None = None,
    progress: bool = True,
    log=None,
) -> TrainResult:
    """Distil a drafter for `model` from teacher caches (see module docstring).

    `stop_after`: end this run (with a checkpoint) after that many total steps; `time_budget_s`:
    likewise after that long. Both leave a checkpoint that `resume=True` continues from.
    """
    cfg = with_init_architecture(config or TrainConfig())
    out_dir = Path(out_dir)
    d = init_distributed(target_embedding(model).weight.device)
    caches = teacher_cache if isinstance(teacher_cache, list) else [teacher_cache]
    data = AnchorData(_load_caches(caches, model), cfg.depths)
    data_info = {"positions": len(data), "world_size": d.world, "caches": [str(c) for c in caches]}
    state = None
    if resume and (out_dir / CHECKPOINT).is_file():
        state = load_checkpoint(out_dir / CHECKPOINT)
        check_resumable(state, cfg, data_info, out_dir / CHECKPOINT)
    drafter = _build_drafter(model, data, cfg, state, d)
    if cfg.freeze_head:
        drafter.head.weight.requires_grad_(False)
    params = [p for p in drafter.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state is not None:
        optim.load_state_dict(state["optimizer"])
    loop = _Loop(model, drafter, optim, data, cfg, d, out_dir, data_info, log)
    loop.history = list(state["history"]) if state else []
    start = state["step"] if state else 0
    end = min(cfg.steps, stop_after) if stop_after is not None else cfg.steps
    interrupted = loop.run(start, end, eval_prompts, time_budget_s, progress)
    return TrainResult(loop.step, loop.last, loop.history, drafter, interrupted)


def with_init_architecture(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the architecture of its `init_from` drafter. A field the caller set to a
    non-default value that differs from that drafter's is an error, not silently dropped; more
    residual blocks or a larger draft vocabulary than it has are allowed (see `grow_blocks`,
    `grow_vocab`; the default draft vocabulary size means "the init drafter's")."""
    if not cfg.init_from:
        return cfg
    from redrafter_rs.drafters.recurrent import CONFIG_NAME, read_config

    init = read_config(Path(cfg.init_from) / CONFIG_NAME)
    default = TrainConfig()
    changes = {}
    for key in _ARCH_KEYS:
        have, want = getattr(cfg, key), getattr(init, key)
        if have == want or (key == "num_layers" and have > want):  # more blocks: grown
            continue
        grow_head = key == "draft_vocab_size" and have != default.draft_vocab_size
        if grow_head and want and (not have or have > want):  # a larger head: grown
            continue
        check(
            have == getattr(default, key),
            f"init_from {cfg.init_from} has {key}={want!r}, this run asks for {have!r}",
        )
        changes[key] = want
    return replace(cfg, **changes)


def grow_blocks(drafter: RecurrentDrafter, num_layers: int) -> RecurrentDrafter:
    """`drafter` with residual blocks appended up to `num_layers`. A new block starts with zero
    weight and bias, x + SiLU(0) = x: the grown drafter computes exactly what `drafter` did, and
    training starts from there (SiLU'(0) = 1/2, so the new blocks do receive gradients)."""
    have = drafter.config.num_layers
    if num_layers <= have:
        return drafter
    grown = RecurrentDrafter(replace(drafter.config, num_layers=num_layers))  # blocks start at 0
    missing, unexpected = grown.load_state_dict(drafter.state_dict(), strict=False)
    new = {f"blocks.{i}.linear.{w}" for i in range(have, num_layers) for w in ("weight", "bias")}
    check(set(missing) == new and not unexpected, f"cannot grow drafter: {missing} {unexpected}")
    return grown.to(next(drafter.parameters()))  # its device and dtype


_D2T = "draft_to_target"


def grow_vocab(
    drafter: RecurrentDrafter, data: AnchorData, size: int | None, model: nn.Module
) -> RecurrentDrafter:
    """`drafter` with its reduced head grown to `size` tokens (None or 0: the full vocabulary).
    The old draft vocabulary keeps its rows and order; the added tokens are those with the most
    teacher mass in `data` that it lacked (most first), their rows initialised from the target's
    LM head as a fresh drafter's are (zero where exit_dim differs from the LM head's input)."""
    have, vocab_size = drafter.config.head_size, drafter.config.vocab_size
    size = min(size or vocab_size, vocab_size)
    if size <= have:
        return drafter
    old_ids = drafter.draft_to_target.cpu()
    new_ids = choose_draft_vocab(data, vocab_size, size - have, exclude=old_ids)
    grown = RecurrentDrafter(replace(drafter.config, draft_vocab_size=size))
    state = {k: v for k, v in drafter.state_dict().items() if k not in ("head.weight", _D2T)}
    missing, unexpected = grown.load_state_dict(state, strict=False)
    check(set(missing) == {"head.weight", _D2T} and not unexpected, f"cannot grow: {missing}")
    grown.set_draft_vocab(torch.cat([old_ids, new_ids]))
    with torch.no_grad():
        grown.head.weight.zero_()  # stays zero where the LM head's rows do not fit
        init_head_from_target(grown, model)
        grown.head.weight[:have] = drafter.head.weight.detach().to(grown.head.weight)
    return grown.to(next(drafter.parameters()))  # its device and dtype


def _load_caches(caches: list, model: nn.Module) -> dict[str, torch.Tensor]:
    from redrafter_rs.training.teacher import concat_chunks

    parts = [load_chunks(c, model) for c in caches]
    return parts[0] if len(parts) == 1 else concat_chunks(parts)


def _build_drafter(
    model: nn.Module, data: AnchorData, cfg: TrainConfig, state: dict | None, d: Dist
) -> RecurrentDrafter:
    if state is not None:
        drafter = _drafter_from_state(state, model)
    elif cfg.init_from:
        drafter = RecurrentDrafter.from_pretrained(cfg.init_from, target=model)
        drafter = grow_blocks(drafter, cfg.num_layers)
        drafter = grow_vocab(drafter, data, cfg.draft_vocab_size, model)
    else:
        torch.manual_seed(cfg.seed)
        vocab_size = target_embedding(model).weight.shape[0]
        vocab = None
        if cfg.draft_vocab_size and cfg.draft_vocab_size < vocab_size:
            vocab = choose_draft_vocab(data, vocab_size, cfg.draft_vocab_size)
        drafter = RecurrentDrafter.for_target(
            model,
            exit_dim=cfg.exit_dim,
            num_layers=cfg.num_layers,
            rnn=cfg.rnn,
            draft_vocab=vocab,
        )
        if cfg.init_head_from_target or cfg.freeze_head:
            copied = init_head_from_target(drafter, model)
            check(copied or not cfg.freeze_head, "freeze_head needs exit_dim == hidden size")
    drafter = drafter.to(d.device).float().train()
    _broadcast_module(drafter, d)
    return drafter


class _Loop:
    """The optimisation loop with logging, checkpoints, τ evaluation and Ctrl-C handling."""

    def __init__(self, model, drafter, optim, data, cfg, d, out_dir, data_info, log) -> None:
        self.model, self.drafter, self.optim, self.data = model, drafter, optim, data
        self.cfg, self.d, self.out_dir, self.data_info = cfg, d, out_dir, data_info
        self.log = log if log is not None else (lambda s: None)
        self.embed = target_embedding(model).weight.detach()  # [V, H], frozen
        unroll = DepthUnroll(drafter)
        if d.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            unroll = DistributedDataParallel(unroll)
        self.net = unroll
        vocab = self.embed.shape[0]
        self.t2d = torch.full((vocab,), -1, dtype=torch.long, device=d.device)
        self.t2d[drafter.draft_to_target] = torch.arange(drafter.config.head_size, device=d.device)
        self.history: list[dict] = []
        self.last: dict = {}
        self.step = 0

    def run(self, start, end, eval_prompts, time_budget_s, progress) -> bool:
        """Steps [start, end); returns True when stopped by Ctrl-C (after a checkpoint)."""
        from tqdm import tqdm

        self.step = start
        bar = tqdm(total=end, initial=start, disable=not (progress and self.d.main), unit="step")
        acc = _Accumulator(self.cfg.depths)
        t0 = time.perf_counter()
        with _DeferredInterrupt() as interrupt:
            stop = False
            while self.step < end and not stop:
                acc.add(*self.train_step(), self.cfg.batch_size * self.d.world)
                self.step += 1
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == end:
                    self.last = acc.flush(self.step, self.d)
                    self.history.append(self.last)
                    bar.set_postfix(loss=f"{self.last['loss']:.3f}", tok_s=self.last["tok_s"])
                    self.log(_format_metrics(self.last))
                if self._due(self.cfg.eval_every) and eval_prompts:
                    self.evaluate(eval_prompts)
                if self._due(self.cfg.ckpt_every):
                    self.checkpoint()
                out_of_time = bool(time_budget_s) and time.perf_counter() - t0 > time_budget_s
                stop = self._any_rank(out_of_time or interrupt.requested)
            bar.close()
            if interrupt.requested:
                self.log(f"interrupted at step {self.step}: saving a checkpoint")
            self.checkpoint()
        return interrupt.requested

    def _due(self, every: int) -> bool:
        return bool(every) and self.step % every == 0

    def _any_rank(self, flag: bool) -> bool:
        """True on every rank if any rank says so (ranks stop after the same step)."""
        if self.d.world == 1:
            return flag
        return bool(_all_reduce(torch.tensor([float(flag)]), self.d).item() > 0)

    def train_step(self) -> tuple[float, dict]:
        cfg, d = self.cfg, self.d
        idx = anchor_order(len(self.data), cfg.batch_size, d.world, d.rank, self.step, cfg.seed)
        batch = {k: v.to(d.device) for k, v in self.data.batch(idx).items()}
        token_emb = self.embed[batch["tokens"]].float()  # [B, D, H]
        for group in self.optim.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        logits = self.net(batch["hidden"], token_emb)  # [B, D, V']
        loss, stats = distill_loss(logits, batch, self.t2d, cfg.hard_weight)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.drafter.parameters(), cfg.grad_clip)
        self.optim.step()
        return float(loss.detach()), stats

    def evaluate(self, prompts: list[torch.Tensor]) -> None:
        if self.d.main:
            tau = evaluate_tau(self.model, self.drafter, prompts, 4, self.cfg.beam_length)
            record = {"step": self.step, "eval_tau": round(tau, 4)}
            self.history.append(record)
            self.log(f"step {self.step}: eval τ (W=4, L={self.cfg.beam_length}) = {tau:.3f}")
        _barrier(self.d)

    def checkpoint(self) -> None:
        if self.d.main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "step": self.step,
                "config": asdict(self.cfg),
                "drafter_config": asdict(self.drafter.config),
                "drafter": {k: v.detach().cpu() for k, v in self.drafter.state_dict().items()},
                "optimizer": self.optim.state_dict(),
                "data": self.data_info,
                "history": self.history,
            }
            save_checkpoint(self.out_dir, state, self.drafter)
        _barrier(self.d)


class _DeferredInterrupt:
    """Ctrl-C finishes the current step, then the loop checkpoints and stops; a second Ctrl-C
    interrupts at once (the last periodic checkpoint stays valid: writes are atomic)."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class _Accumulator:
    """Loss, per-depth KL and top-1 agreement, and throughput since the last log line."""

    def __init__(self, depths: int) -> None:
        self.depths = depths
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(3 * self.depths + 2)  # kl[D], correct[D], n[D], loss, steps
        self.anchors = 0
        self.t0 = time.perf_counter()

    def add(self, loss: float, stats: dict, anchors: int) -> None:
        D = self.depths
        self.sums[:D] += stats["kl"].cpu()
        self.sums[D : 2 * D] += stats["correct"].cpu()
        self.sums[2 * D : 3 * D] += stats["n"].cpu()
        self.sums[-2] += loss
        self.sums[-1] += 1
        self.anchors += anchors

    def flush(self, step: int, d: Dist) -> dict:
        D = self.depths
        sums = _all_reduce(self.sums.clone(), d)
        steps = float(sums[-1])  # summed over ranks
        elapsed = time.perf_counter() - self.t0
        metrics = {
            "step": step,
            "loss": round(float(sums[-2]) / steps, 4),
            "kl_per_depth": [round(float(x) / steps, 4) for x in sums[:D]],
            "acc_per_depth": [
                round(float(c) / max(float(n), 1.0), 4)
                for c, n in zip(sums[D : 2 * D], sums[2 * D : 3 * D], strict=True)
            ],
            "tok_s": round(self.anchors / max(elapsed, 1e-9), 1),
        }
        self.reset()
        return metrics


def _format_metrics(m: dict) -> str:
    accs = " ".join(f"{a:.3f}" for a in m["acc_per_depth"])
    return f"step {m['step']}: loss {m['loss']:.4f}  acc/depth [{accs}]  {m['tok_s']:.0f} anchors/s"


@torch.no_grad()
def validate(
    drafter: RecurrentDrafter,
    model: nn.Module,
    teacher_cache: str | Path | list[str | Path],
    beam_length: int | None = None,
    batch_size: int = 512,
) -> dict:
    """Per-depth KL and top-1 agreement of `drafter` over every anchor of held-out caches."""
    caches = teacher_cache if isinstance(teacher_cache, list) else [teacher_cache]
    depths = (beam_length or 5) - 1
    data = AnchorData(_load_caches(caches, model), depths)
    embed = target_embedding(model).weight.detach()
    device = embed.device
    t2d = torch.full((embed.shape[0],), -1, dtype=torch.long, device=device)
    t2d[drafter.draft_to_target] = torch.arange(drafter.config.head_size, device=device)
    unroll = DepthUnroll(drafter).eval()
    acc = _Accumulator(depths)
    for lo in range(0, len(data), batch_size):
        idx = torch.arange(lo, min(lo + batch_size, len(data)))
        batch = {k: v.to(device) for k, v in data.batch(idx).items()}
        logits = unroll(batch["hidden"].to(embed.dtype), embed[batch["tokens"]])
        loss, stats = distill_loss(logits, batch, t2d)
        stats["kl"] = stats["kl"] * stats["n"]  # weight depths by their anchor counts
        acc.add(float(loss), stats, len(idx))
    sums = acc.sums
    D = depths
    n = sums[2 * D : 3 * D].clamp(min=1)
    return {
        "positions": len(data),
        "kl_per_depth": [round(float(x), 4) for x in sums[:D] / n],
        "acc_per_depth": [round(float(x), 4) for x in sums[D : 2 * D] / n],
    }
