"""Drafter: beam search shapes/determinism, checkpoints, and target-compatibility checks."""

from __future__ import annotations

import json
import os

import pytest
import torch

import redrafter_rs as rr
from helpers import tiny_llama
from redrafter_rs import RedrafterError


def test_beam_search_shapes_root_and_determinism(tiny_model, tiny_drafter):
    embed = tiny_model.get_input_embeddings()
    h = torch.randn(3, 64)
    root = torch.tensor([5, 6, 7])
    beams = rr.beam_search(tiny_drafter, embed, h, root, 4, 5)
    assert beams.shape == (3, 4, 5) and beams.dtype == torch.long
    assert torch.equal(beams[:, :, 0], root[:, None].expand(3, 4))
    # the first expansion comes from the single live beam: W distinct children of the root
    first = rr.beam_search(tiny_drafter, embed, h, root, 4, 2)
    assert all(len(set(first[b, :, 1].tolist())) == 4 for b in range(3))
    assert torch.equal(beams, rr.beam_search(tiny_drafter, embed, h, root, 4, 5))
    # beams are distinct sequences (top-W over distinct (parent, token) pairs)
    assert len({tuple(x) for x in beams[0].tolist()}) == 4


def test_beam_search_l1_and_bad_args(tiny_model, tiny_drafter):
    embed = tiny_model.get_input_embeddings()
    h, root = torch.randn(1, 64), torch.tensor([4])
    assert rr.beam_search(tiny_drafter, embed, h, root, 3, 1).tolist() == [[[4], [4], [4]]]
    with pytest.raises(RedrafterError, match="beam_width"):
        rr.beam_search(tiny_drafter, embed, h, root, 0, 3)
    with pytest.raises(RedrafterError, match="beam_length"):
        rr.beam_search(tiny_drafter, embed, h, root, 2, 0)
    with pytest.raises(RedrafterError, match="root"):
        rr.beam_search(tiny_drafter, embed, h, torch.tensor([1, 2]), 2, 3)
    with pytest.raises(RedrafterError, match="exceeds"):
        rr.beam_search(tiny_drafter, embed, h, root, 1000, 3)


def _path_log_prob(drafter, embed, h, path):
    """log q(path[1:] | root = path[0]) under the drafter, one token at a time ([H], [d+1])."""
    state, total = h.new_zeros(1, h.shape[0]), 0.0
    to_draft = {int(t): i for i, t in enumerate(drafter.draft_to_target.tolist())}
    for prev, tok in zip(path[:-1], path[1:], strict=True):
        state = drafter.rnn_step(state, embed(torch.tensor([prev])))
        log_q = torch.log_softmax(drafter.logits(h[None], state).float(), dim=-1)
        total += float(log_q[0, to_draft[tok]])
    return total


def test_best_nodes_are_the_most_probable_paths(tiny_model):
    # 6 draft tokens and W = 6: every node to depth 2 is expanded, so the N kept nodes must be
    # the N most probable of all 6 + 36 paths (brute force), best first, and form a tree.
    torch.manual_seed(3)
    vocab = torch.tensor([9, 3, 40, 41, 77, 2])
    drafter = rr.RecurrentDrafter.for_target(tiny_model, draft_vocab=vocab).eval()
    embed = tiny_model.get_input_embeddings()
    h, root = torch.randn(2, 64), torch.tensor([5, 6])
    beams = rr.best_nodes_search(drafter, embed, h, root, 10, 6, 3)  # [B, N, L]
    assert beams.shape == (2, 10, 3) and beams.dtype == torch.long
    assert torch.equal(beams, rr.best_nodes_search(drafter, embed, h, root, 10, 6, 3))
    with torch.no_grad():
        for b in range(2):
            r = int(root[b])
            paths = [(r, int(x)) for x in vocab] + [
                (r, int(x), int(y)) for x in vocab for y in vocab
            ]
            score = {p: _path_log_prob(drafter, embed, h[b], p) for p in paths}
            want = sorted(paths, key=lambda p: -score[p])[:10]
            got = [tuple(t for t in row if t >= 0) for row in beams[b].tolist()]
            assert got == want
            assert all(p[:-1] in got or len(p) == 2 for p in got)  # prefix-closed
            tree = rr.pack_beams(beams[b : b + 1].numpy())
            assert tree.num_nodes.tolist() == [11]  # the root + N distinct nodes


def test_best_nodes_budget_and_bad_args(tiny_model, tiny_drafter):
    embed = tiny_model.get_input_embeddings()
    h, root = torch.randn(1, 64), torch.tensor([4])
    # W = 2, L = 4: 2 + 4 + 4 candidates, so a larger budget keeps all of them
    many = rr.best_nodes_search(tiny_drafter, embed, h, root, 50, 2, 4)
    assert many.shape == (1, 10, 4)
    assert rr.pack_beams(many.numpy()).num_nodes.tolist() == [11]
    assert rr.best_nodes_search(tiny_drafter, embed, h, root, 3, 2, 1).tolist() == [[[4]]]
    with pytest.raises(RedrafterError, match="tree_nodes"):
        rr.best_nodes_search(tiny_drafter, embed, h, root, 0, 2, 3)
    with pytest.raises(RedrafterError, match="beam_width"):
        rr.best_nodes_search(tiny_drafter, embed, h, root, 3, 0, 3)


def test_reduced_vocabulary_maps_back_to_target_ids(tiny_model):
    vocab = torch.tensor([9, 3, 40, 41, 77, 2, 60, 11])
    drafter = rr.RecurrentDrafter.for_target(tiny_model, draft_vocab=vocab, exit_dim=32)
    embed = tiny_model.get_input_embeddings()
    beams = rr.beam_search(drafter, embed, torch.randn(2, 64), torch.tensor([0, 1]), 4, 4)
    assert set(beams[:, :, 1:].flatten().tolist()) <= set(vocab.tolist())
    ids = torch.tensor([[4, 5, 6]])
    want = tiny_model.generate(ids, do_sample=False, max_new_tokens=12)
    assert torch.equal(rr.generate(tiny_model, drafter, ids, max_new_tokens=12).sequences, want)


def test_save_and_load_roundtrip(tmp_path, tiny_model):
    torch.manual_seed(0)
    drafter = rr.RecurrentDrafter.for_target(
        tiny_model, num_layers=2, exit_dim=48, draft_vocab=torch.arange(10, 42)
    )
    drafter.save_pretrained(tmp_path)
    loaded = rr.RecurrentDrafter.from_pretrained(tmp_path, target=tiny_model)
    assert loaded.config == drafter.config
    for (k, a), (_, b) in zip(
        drafter.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["vocab_size"] == 96 and cfg["hidden_size"] == 64 and cfg["embedding_probe"]
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.json"):  # readable like any file the user writes
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_half_precision_storage_roundtrips_within_precision(tmp_path, tiny_model):
    drafter = rr.RecurrentDrafter.for_target(tiny_model)
    drafter.save_pretrained(tmp_path, dtype=torch.bfloat16)
    loaded = rr.RecurrentDrafter.from_pretrained(tmp_path, target=tiny_model)
    assert torch.allclose(loaded.head.weight, drafter.head.weight, rtol=1e-2, atol=1e-2)
    assert (tmp_path / "model.safetensors").stat().st_size < 0.6 * sum(
        p.numel() * 4 for p in drafter.parameters()
    )


def test_mismatched_target_is_refused(tmp_path, tiny_model):
    rr.RecurrentDrafter.for_target(tiny_model).save_pretrained(tmp_path)
    other_vocab = tiny_llama(vocab_size=100)
    with pytest.raises(RedrafterError, match="vocab_size=96.*vocab_size=100"):
        rr.RecurrentDrafter.from_pretrained(tmp_path, target=other_vocab)
    same_shape_other_weights = tiny_llama(seed=42)
    with pytest.raises(RedrafterError, match="fingerprint"):
        rr.RecurrentDrafter.from_pretrained(tmp_path, target=same_shape_other_weights)
    drafter = rr.RecurrentDrafter.from_pretrained(tmp_path)
    with pytest.raises(RedrafterError, match="mismatch"):
        rr.generate(same_shape_other_weights, drafter, torch.tensor([[1, 2]]), max_new_tokens=2)


def test_corrupt_checkpoints_give_clear_errors(tmp_path, tiny_model):
    rr.RecurrentDrafter.for_target(tiny_model).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(RedrafterError, match="corrupt"):
        rr.RecurrentDrafter.from_pretrained(tmp_path)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(RedrafterError, match="corrupt"):
        rr.RecurrentDrafter.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RedrafterError, match="not valid JSON"):
        rr.RecurrentDrafter.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(RedrafterError, match="model_type"):
        rr.RecurrentDrafter.from_pretrained(tmp_path)
    with pytest.raises(RedrafterError, match="not found"):
        rr.RecurrentDrafter.from_pretrained(tmp_path / "missing")


def test_checkpoint_with_wrong_tensor_shapes(tmp_path, tiny_model):
    rr.RecurrentDrafter.for_target(tiny_model, exit_dim=32).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["exit_dim"] = 40
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RedrafterError, match="shape"):
        rr.RecurrentDrafter.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("ids", "kwargs", "fragment"),
    [
        (torch.zeros(1, 0, dtype=torch.long), {}, "empty"),
        (torch.ones(1, 250, dtype=torch.long), {"max_new_tokens": 10}, "max_position_embeddings"),
        (torch.ones(1, 3), {}, "integer"),
        (torch.tensor([[1, 500]]), {}, "token ids"),
        (torch.tensor([[1, -2]]), {}, "token ids"),
        (torch.ones(1, 1, 3, dtype=torch.long), {}, "[B, T]"),
        (torch.ones(1, 3, dtype=torch.long), {"beam_width": 0}, "beam_width"),
        (torch.ones(1, 3, dtype=torch.long), {"beam_length": 0}, "beam_length"),
        (torch.ones(1, 3, dtype=torch.long), {"max_new_tokens": 0}, "max_new_tokens"),
        (torch.ones(1, 3, dtype=torch.long), {"tree_nodes": 0}, "tree_nodes"),
        (torch.ones(1, 3, dtype=torch.long), {"tree_nodes": 4, "adaptive": True}, "adaptive"),
    ],
)
def test_generate_rejects_bad_input(tiny_model, tiny_drafter, ids, kwargs, fragment):
    with pytest.raises(RedrafterError) as info:
        rr.generate(tiny_model, tiny_drafter, ids, **kwargs)
    assert fragment in str(info.value)


def test_checkpoints_hold_no_machine_paths(tmp_path, tiny_model):
    """target_name is a portable model name: a local directory becomes its last component
    (hub ids stay), new drafters and older checkpoints alike; the shipped one has no path."""
    from redrafter_rs.assets import DEFAULT_DRAFTER
    from redrafter_rs.drafters.recurrent import portable_model_name

    assert portable_model_name("/root/.cache/redrafter/models/SmolLM2-135M-Instruct") == (
        "SmolLM2-135M-Instruct"
    )
    assert portable_model_name("~/models/m1/") == "m1"
    assert portable_model_name("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert portable_model_name("") == ""
    before = tiny_model.config._name_or_path
    tiny_model.config._name_or_path = str(tmp_path / "my-target")
    try:
        drafter = rr.RecurrentDrafter.for_target(tiny_model)
    finally:
        tiny_model.config._name_or_path = before
    assert drafter.config.target_name == "my-target"
    drafter.save_pretrained(tmp_path / "d")
    raw = json.loads((tmp_path / "d" / "config.json").read_text())
    raw["target_name"] = "/home/someone/cache/my-target"  # as older versions wrote it
    (tmp_path / "d" / "config.json").write_text(json.dumps(raw))
    assert rr.RecurrentDrafter.from_pretrained(tmp_path / "d").config.target_name == "my-target"
    shipped = json.loads((DEFAULT_DRAFTER / "config.json").read_text())["target_name"]
    assert shipped == "SmolLM2-135M-Instruct"
