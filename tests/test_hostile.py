"""Hostile and careless use (issue #20): every probe that once crashed, lost a result, ignored
a limit or leaked a raw exception, kept as a regression test. Each bad input must raise
`RedrafterError` naming the argument (or, on the command line, print a message and exit 2)
before any model work starts.

The Rust core through its binding (last section): sizes no machine could hold are refused with a
`RedrafterError` naming the limit, and a negative integer argument is a `RedrafterError` naming
the argument, never pyo3's `OverflowError`. The oversized cases run in a child process, so that a
regression (an aborted allocation) fails the test instead of killing the test run."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
import warnings
import zlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

import redrafter_rs as rr
from helpers import OracleDrafter
from redrafter_rs import RedrafterError, _core, cli
from redrafter_rs.drafters.recurrent import CHECKSUM_KEY, CONFIG_NAME, WEIGHTS_NAME, tensors_sha256

PROMPT = torch.tensor([[5, 6, 7, 8, 9]])


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def drafter(tiny_drafter):
    return tiny_drafter


# ---- valid input that crashed -------------------------------------------------------------
def test_learned_positions_run_to_the_end_of_the_table():
    """GPT-2: tree positions past n_positions raised IndexError although prompt + budget fit."""
    torch.manual_seed(0)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32)
    m = GPT2LMHeadModel(config).eval()
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0
    ids = torch.randint(2, 100, (1, 20), generator=torch.Generator().manual_seed(1))
    ref = m.generate(ids, do_sample=False, max_new_tokens=12)
    torch.manual_seed(1)
    drafters = [rr.RecurrentDrafter.for_target(m).eval(), OracleDrafter(ref, 100)]
    for d in drafters:  # the oracle's full acceptance drafts right up to position 31 and past
        out = rr.generate(m, d, ids, max_new_tokens=12, beam_width=3, beam_length=5)
        assert torch.equal(out.sequences, ref)
    with pytest.raises(rr.RedrafterError, match="max_position_embeddings"):
        rr.generate(m, drafters[0], ids, max_new_tokens=13)


# ---- the step API: lost results, ignored limits, threads ------------------------------------
def test_re_adding_a_finished_uncollected_id_is_refused(model, drafter):
    gen = rr.SpeculativeGenerator(model, drafter, rr.SpecConfig(max_new_tokens=3))
    gen.add("a", PROMPT)
    while gen.has_unfinished():
        gen.step()
    with pytest.raises(rr.RedrafterError, match="pop_finished"):
        gen.add("a", PROMPT)
    done = gen.pop_finished()
    assert len(done["a"].tokens) == 3  # the first result survived
    gen.add("a", PROMPT)  # collected: the id may be reused
    assert gen.has_unfinished()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_step_api_max_new_tokens_is_checked(model, drafter, bad):
    gen = rr.SpeculativeGenerator(model, drafter)
    with pytest.raises(rr.RedrafterError, match="max_new_tokens"):
        gen.add("a", PROMPT, max_new_tokens=bad)
    assert not gen.has_unfinished()


def test_step_api_refuses_bad_ids_and_arguments(model, drafter):
    gen = rr.SpeculativeGenerator(model, drafter)
    with pytest.raises(rr.RedrafterError, match="request_id must be hashable"):
        gen.add(["x"], PROMPT)
    with pytest.raises(rr.RedrafterError, match="sampling must be a SamplingParams"):
        gen.add("a", PROMPT, sampling={"temperature": 1.0})
    with pytest.raises(rr.RedrafterError, match="either sampling.seed or generator"):
        gen.add("a", PROMPT, rr.SamplingParams(1.0, seed=1), generator=torch.Generator())
    with pytest.raises(rr.RedrafterError, match="drafter must be"):
        rr.SpeculativeGenerator(model, "abc")
    assert not gen.has_unfinished()


def test_two_threads_stepping_get_a_clear_error(model):
    """One thread drives step(); a second step() while one runs is refused, and add() from
    another thread waits for the running step, then joins the batch."""
    started, release = threading.Event(), threading.Event()

    class SlowDrafter(OracleDrafter):
        def draft(self, *args, **kwargs):
            started.set()
            release.wait(10)
            return super().draft(*args, **kwargs)

    gen = rr.SpeculativeGenerator(model, SlowDrafter([], model.config.vocab_size))
    gen.add("a", PROMPT, max_new_tokens=8)
    errors: list[BaseException] = []
    stepper = threading.Thread(target=lambda: gen.step())
    stepper.start()
    assert started.wait(10)
    with pytest.raises(rr.RedrafterError, match="already running"):
        gen.step()

    def add_b():
        try:
            gen.add("b", PROMPT, max_new_tokens=4)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    adder = threading.Thread(target=add_b)
    adder.start()
    adder.join(0.2)
    assert adder.is_alive()  # waits for the running step
    release.set()
    stepper.join(10)
    adder.join(10)
    assert not errors
    while gen.has_unfinished():
        gen.step()
    done = gen.pop_finished()
    assert len(done["a"].tokens) == 8 and len(done["b"].tokens) == 4


def test_a_drafter_hook_cannot_re_enter_step(model):
    class ReEntrant(OracleDrafter):
        gen = None

        def draft(self, *args, **kwargs):
            self.gen.step()

    d = ReEntrant([], model.config.vocab_size)
    d.gen = gen = rr.SpeculativeGenerator(model, d)
    gen.add("a", PROMPT, max_new_tokens=4)
    with pytest.raises(rr.RedrafterError, match="already running"):
        gen.step()  # prefill, then the decode step whose drafter calls step()


# ---- generate's arguments ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_new_tokens": 1.5}, "max_new_tokens must be an integer"),
        ({"max_new_tokens": None}, "max_new_tokens must be an integer"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"beam_width": 2.0}, "beam_width must be an integer"),
        ({"tree_nodes": 0}, "tree_nodes must be >= 1"),
        ({"temperature": float("inf")}, "temperature must be finite"),
        ({"temperature": float("nan")}, "temperature must be finite"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"top_k": 2.5}, "top_k must be an integer"),
        ({"top_p": 0.0}, "top_p must be > 0"),
        ({"seed": 1.5, "temperature": 1.0}, "seed must be an integer"),
        ({"seed": [1, 2], "temperature": 1.0}, "one seed per row"),
        ({"seed": 1, "generator": torch.Generator()}, "either seed or generator"),
        ({"adaptive": "yes"}, "adaptive must be true or false"),
    ],
)
def test_generate_arguments_are_checked(model, drafter, kwargs, match):
    with pytest.raises(rr.RedrafterError, match=match):
        rr.generate(model, drafter, PROMPT, **kwargs)


def test_generate_refuses_a_drafter_that_is_not_one(model):
    with pytest.raises(rr.RedrafterError, match="drafter must be None or a drafter"):
        rr.generate(model, "abc", PROMPT)
    with pytest.raises(rr.RedrafterError, match="drafter must be None or a drafter"):
        next(rr.stream(model, 3, PROMPT))


@pytest.mark.parametrize("value", [0.5, 2, -1])
def test_attention_mask_values_must_be_zero_or_one(model, drafter, value):
    ids = torch.tensor([[0, 5, 6, 7], [4, 5, 6, 7]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.float)
    mask[0, 0] = value
    with pytest.raises(rr.RedrafterError, match="attention_mask: values must be 0"):
        rr.generate(model, drafter, ids, attention_mask=mask, max_new_tokens=2)


def test_sampling_params_are_typed():
    with pytest.raises(rr.RedrafterError, match="temperature must be finite"):
        rr.SamplingParams(temperature=float("inf"))
    with pytest.raises(rr.RedrafterError, match="seed must be an integer"):
        rr.SamplingParams(temperature=1.0, seed="1")
    with pytest.raises(rr.RedrafterError, match="min_p must be <= 1"):
        rr.SamplingParams(temperature=1.0, min_p=2)


# ---- drafter checkpoints -------------------------------------------------------------------
def _edit_config(directory, **changes) -> None:
    path = directory / CONFIG_NAME
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format_version": "1"}, "format_version must be a non-negative integer"),
        ({"embedding_probe": "abc"}, "embedding_probe must be a list of 64 numbers"),
        ({"embedding_probe": [0.0] * 63 + ["x"]}, "embedding_probe value must be a number"),
        ({"hidden_size": "64"}, "hidden_size must be an integer"),
        ({"rnn": "false"}, "rnn must be true or false"),
        ({"num_layers": -1}, "num_layers must be >= 0"),
        ({"tensors_sha256": 5}, "tensors_sha256 must be a 64-character hex string"),
    ],
)
def test_bad_checkpoint_configs_are_refused(tmp_path, drafter, changes, match):
    drafter.save_pretrained(tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(rr.RedrafterError, match=match):
        rr.RecurrentDrafter.from_pretrained(tmp_path)


def test_missing_config_fields_are_named(tmp_path, drafter):
    drafter.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / CONFIG_NAME).read_text())
    del raw["vocab_size"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(raw))
    with pytest.raises(rr.RedrafterError, match=r"missing config fields \['vocab_size'\]"):
        rr.RecurrentDrafter.from_pretrained(tmp_path)


def test_bit_flipped_weights_are_refused(tmp_path, drafter):
    drafter.save_pretrained(tmp_path)
    path = tmp_path / WEIGHTS_NAME
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor's data: still a valid safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(rr.RedrafterError, match="does not match the tensors_sha256"):
        rr.RecurrentDrafter.from_pretrained(tmp_path)


def test_non_finite_weights_are_refused(tmp_path, drafter):
    drafter.save_pretrained(tmp_path)
    path = tmp_path / WEIGHTS_NAME
    state = load_file(str(path))
    state["head.weight"][0, 0] = float("nan")
    save_file(state, str(path))
    _edit_config(tmp_path, **{CHECKSUM_KEY: tensors_sha256(state)})
    with pytest.raises(rr.RedrafterError, match="'head.weight' holds NaN or infinite"):
        rr.RecurrentDrafter.from_pretrained(tmp_path)


def test_checkpoints_without_a_checksum_load_with_a_note(tmp_path, drafter):
    drafter.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / CONFIG_NAME).read_text())
    del raw[CHECKSUM_KEY]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(raw))
    with pytest.warns(UserWarning, match="no tensors_sha256"):
        loaded = rr.RecurrentDrafter.from_pretrained(tmp_path)
    assert torch.equal(loaded.head.weight, drafter.head.weight)
    with warnings.catch_warnings():  # a fresh save verifies silently
        warnings.simplefilter("error")
        loaded.save_pretrained(tmp_path)
        rr.RecurrentDrafter.from_pretrained(tmp_path)


def test_the_shipped_drafter_carries_its_checksum():
    from redrafter_rs.assets import DEFAULT_DRAFTER

    raw = json.loads((DEFAULT_DRAFTER / CONFIG_NAME).read_text())
    state = load_file(str(DEFAULT_DRAFTER / WEIGHTS_NAME))
    assert raw[CHECKSUM_KEY] == tensors_sha256(state)


def test_save_onto_a_file_is_refused(tmp_path, drafter):
    target = tmp_path / "file"
    target.write_text("keep me")
    with pytest.raises(rr.RedrafterError, match="exists and is not a directory"):
        drafter.save_pretrained(target)
    assert target.read_text() == "keep me"


# ---- the command line ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--threads", "-2", "hi"],
        ["generate", "--threads", "0", "hi"],
        ["generate", "--max-new-tokens", "0", "hi"],
        ["generate", "-W", "x", "hi"],
        ["demo", "--tree-nodes", "-1"],
        ["bench", "--threads", "0"],
        ["bench-core", "--threads", "-1"],
        ["train", "--steps", "0"],
        ["train", "--lr", "inf"],
    ],
)
def test_cli_bad_numbers_exit_2_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    flag = next(a for a in argv if a.startswith("-"))
    assert "error: argument" in err and flag in err  # names the flag
    assert "must be" in err or "expected" in err  # and what it wants


def test_datastore_build_with_a_missing_tokenizer(tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text("some text")
    code = cli.main(
        ["datastore", "build", "--tokenizer", str(tmp_path / "nonexistent"), "-o",
         str(tmp_path / "x.rrds"), str(doc)]
    )  # fmt: skip
    assert code == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "x.rrds").exists()


def test_datastore_build_on_an_empty_corpus(tmp_path, capsys):
    from redrafter_rs.drafters.datastore import build_datastore

    doc = tmp_path / "empty.txt"
    doc.write_text("")
    code = cli.main(["datastore", "build", "-o", str(tmp_path / "x.rrds"), str(doc)])
    assert code == 2
    assert "nothing to index" in capsys.readouterr().err
    assert not (tmp_path / "x.rrds").exists()
    with pytest.raises(rr.RedrafterError, match="nothing to index"):
        build_datastore([[], []])


# ---- the Rust core through its binding ------------------------------------------------------
MAX_MASK_ELEMENTS = 1 << 30
MAX_QUERY_TOKENS = 1 << 24

CHILD = """
import numpy as np
from redrafter_rs import RedrafterError, _core
try:
    _core.pack_beams(np.zeros({shape!r}, np.int64))
except RedrafterError as e:
    print("RedrafterError:", e)
else:
    print("no error")
"""


@pytest.mark.slow  # a subprocess per case
@pytest.mark.parametrize(
    ("shape", "nodes"),
    [
        ((1, 1, 10**6), 10**6),  # one chain of a million nodes: a 10**12-element mask
        ((1, 1, 300_000), 300_000),
        ((3_000, 1, 1_000), 1_000),  # many moderate rows: B * N**2 = 3e9
    ],
)
def test_oversized_mask_is_an_error_not_an_abort(shape, nodes):
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(shape=shape)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    out = proc.stdout.strip()
    assert out.startswith("RedrafterError: beams:"), out
    requested = shape[0] * nodes * nodes
    assert f"would hold {requested} elements" in out, out
    assert f"more than the limit of {MAX_MASK_ELEMENTS} (MAX_MASK_ELEMENTS)" in out, out


def test_mask_just_under_the_limit_still_packs():
    # ended beams keep N small even when W * L is large
    beams = np.full((1, 4, 50_000), -1, dtype=np.int64)
    beams[:, :, 0] = 3
    beams[:, 1, 1] = 4
    tree = _core.pack_beams(beams)
    assert tree.max_nodes == 2 and tree.mask.shape == (1, 2, 2)


def _automaton() -> _core.SuffixAutomaton:
    return _core.SuffixAutomaton(np.array([1, 2, 3, 1, 2], dtype=np.int64))


def _datastore() -> _core.Datastore:
    return _core.Datastore.build(np.array([1, 2, 3, -1, 1, 2, 4], dtype=np.int64))


CTX = np.array([1, 2], dtype=np.int64)
BEAMS = np.array([[[5, 6, 7], [5, 6, 8]]], dtype=np.int64)


def _calls():
    """(label, argument name, call with that argument = -1)."""
    query_args = ["k", "length", "min_match", "count_cap", "max_levels"]
    for arg in query_args:
        yield f"SuffixAutomaton.query:{arg}", arg, lambda a=arg: _automaton().query(**{a: -1})
        yield (
            f"SuffixAutomaton.query(context):{arg}",
            arg,
            lambda a=arg: _automaton().query(context=CTX, **{a: -1}),
        )
        yield f"Datastore.query:{arg}", arg, lambda a=arg: _datastore().query(CTX, **{a: -1})
    for arg in query_args[2:]:
        yield (
            f"retrieve:{arg}",
            arg,
            lambda a=arg: _core.retrieve([_automaton()], 2, 3, datastore=_datastore(), **{a: -1}),
        )
    yield "retrieve:k", "k", lambda: _core.retrieve([_automaton()], -1, 3)
    yield "retrieve:length", "length", lambda: _core.retrieve([_automaton()], 2, -1)
    yield "SuffixAutomaton.count:cap", "cap", lambda: _automaton().count(CTX, cap=-1)
    yield "Datastore.count:cap", "cap", lambda: _datastore().count(CTX, -1)
    yield "pack_beams:vocab_size", "vocab_size", lambda: _core.pack_beams(BEAMS, vocab_size=-1)
    yield "pack_beams:vocab_size(kw-less)", "vocab_size", lambda: _core.pack_beams(BEAMS, -1)


CALLS = list(_calls())


@pytest.mark.parametrize(("arg", "call"), [c[1:] for c in CALLS], ids=[c[0] for c in CALLS])
def test_negative_int_arguments_raise_redrafter_error(arg, call):
    with pytest.raises(RedrafterError, match=rf"^{arg} must be >= \d+, got -1$"):
        call()


def test_negative_ints_are_value_errors_not_overflow_errors():
    with pytest.raises(ValueError) as info:
        _datastore().query(CTX, k=-1)
    assert not isinstance(info.value, OverflowError)
    assert isinstance(info.value, RedrafterError)


def test_vocab_size_zero_is_refused_and_positive_still_works():
    with pytest.raises(RedrafterError, match="vocab_size must be >= 1, got 0"):
        _core.pack_beams(BEAMS, vocab_size=0)
    assert _core.pack_beams(BEAMS, vocab_size=9).max_nodes == 4
    with pytest.raises(RedrafterError, match=r"beams\[0, 1, 2\] = 8 is out of range"):
        _core.pack_beams(BEAMS, vocab_size=8)


def test_zero_and_huge_caps_are_accepted():
    sam, ds = _automaton(), _datastore()
    assert sam.count(np.array([1, 2], dtype=np.int64), cap=0) == 0
    assert sam.count(np.array([1, 2], dtype=np.int64), cap=2**40) == 2
    assert ds.count(np.array([1, 2], dtype=np.int64), 2**40) == 2
    got = ds.query(CTX, k=0, length=0, min_match=0, count_cap=0, max_levels=0)
    assert got.tokens.shape == (0, 0)
    assert ds.query(CTX, count_cap=2**40).num.item() >= 1


@pytest.mark.parametrize(
    "call",
    [
        lambda: _automaton().query(k=4, length=10**9),
        lambda: _automaton().query(k=2**40, length=1),
        lambda: _automaton().query(context=CTX, length=2**62),
        lambda: _datastore().query(CTX, k=1, length=MAX_QUERY_TOKENS + 1),
        lambda: _core.retrieve([_automaton()], 2**30, 2**30),
    ],
)
def test_oversized_queries_name_the_limit(call):
    with pytest.raises(RedrafterError, match=rf"more than the limit of {MAX_QUERY_TOKENS}"):
        call()


def test_oversized_batches_name_the_limit():
    # each row's k * length is fine; the [B, k, length] output is not
    rows = [_automaton() for _ in range(3)]
    with pytest.raises(RedrafterError, match=r"3 rows.*\(MAX_QUERY_TOKENS\)"):
        _core.retrieve(rows, 4, 2**21)
    assert _core.retrieve(rows, 2, 3).tokens.shape == (3, 2, 3)


def _reseal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize(
    ("offset", "value"),
    [(32, 2**64 - 1), (40, 2**64 - 1), (32, 2**40), (40, 2**61)],
)
def test_datastore_files_claiming_huge_arrays_are_refused(tmp_path, offset, value):
    good = tmp_path / "good.ds"
    _datastore().save(good)
    data = bytearray(good.read_bytes())
    struct.pack_into("<Q", data, offset, value)
    bad = tmp_path / "bad.ds"
    bad.write_bytes(_reseal(bytes(data[:-4])))
    with pytest.raises(RedrafterError, match="truncated or oversized"):
        _core.Datastore.load(bad)


def test_datastore_with_bogus_token_counts_is_refused(tmp_path):
    good = tmp_path / "good.ds"
    _datastore().save(good)
    data = bytearray(good.read_bytes())
    struct.pack_into("<Q", data, 16, 2**63)  # T: corpus tokens
    bad = tmp_path / "bad.ds"
    bad.write_bytes(_reseal(bytes(data[:-4])))
    with pytest.raises(RedrafterError, match="inconsistent content"):
        _core.Datastore.load(bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": -1}, r"n must be in \[1, 1024\], got -1"),
        ({"n": 10**6}, r"n must be in \[1, 1024\], got 1000000"),
        ({"n": 2, "spin_us": -1}, "spin_us must be >= 0, got -1"),
    ],
)
def test_kernel_thread_arguments_are_checked(kwargs, match):
    before = _core.kernel_threads()
    with pytest.raises(RedrafterError, match=match):
        _core.set_kernel_threads(**kwargs)
    assert _core.kernel_threads() == before  # the pool was not replaced
