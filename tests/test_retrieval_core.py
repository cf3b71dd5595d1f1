"""Retrieval rules that live once in the Rust core: the defaults (`RETRIEVAL_DEFAULTS`, read by
the binding's signatures and `RetrievalConfig`), the datastore cursor of each automaton and the
padding of candidate arrays, seen through the binding."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from redrafter_rs import RedrafterError, _core
from redrafter_rs.drafters.retrieval import RetrievalConfig

DEFAULTS = _core.RETRIEVAL_DEFAULTS
QUERY_ARGS = ["k", "length", "min_match", "count_cap", "max_levels"]


def _i64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _same(a: _core.Candidates, b: _core.Candidates) -> bool:
    return all(
        np.array_equal(getattr(a, f), getattr(b, f))
        for f in ("tokens", "lengths", "match_len", "count", "num")
    )


# ---- defaults -------------------------------------------------------------------------------
def test_defaults_are_the_documented_values():
    assert DEFAULTS == {
        "query": {"k": 4, "length": 4, "min_match": 1, "count_cap": 16, "max_levels": 8},
        "datastore_query": {
            "k": 4,
            "length": 4,
            "min_match": 1,
            "count_cap": 2**32 - 1,
            "max_levels": 8,
        },
        "count": {"cap": 2**32 - 1},
        "draft": {"min_match": 2, "count_cap": 16, "max_levels": 8},
    }


def test_retrieval_config_reads_the_core_defaults():
    config = RetrievalConfig()
    for name, value in DEFAULTS["draft"].items():
        assert getattr(config, name) == value
    fields = {f.name: f.default for f in dataclasses.fields(RetrievalConfig)}
    assert {n: fields[n] for n in DEFAULTS["draft"]} == DEFAULTS["draft"]


def _rich_text() -> np.ndarray:
    """A text whose own-end query depends on every default: its last token 7 occurred 25
    times, followed by 1 twenty times (so counts pass the cap of 16) and by 2 to 6 once each
    (more than 4 candidates), each continuation running on for more than 4 tokens."""
    text = [7, 1, 50, 51, 52, 53] * 20
    for t in (2, 3, 4, 5, 6):
        text += [7, t, 60, 61, 62, 63]
    return _i64([*text, 99, 7])


def test_automaton_signature_defaults_are_the_core_defaults():
    sam = _core.SuffixAutomaton(_rich_text())
    implicit, explicit = sam.query(), sam.query(**DEFAULTS["query"])
    assert _same(implicit, explicit)
    assert implicit.tokens.shape == (4, 4)  # k, length
    assert implicit.count[0] == 16  # count_cap binds: "7 1" occurs 20 times
    assert implicit.tokens[0].tolist() == [1, 50, 51, 52]
    ctx = _i64([9, 7])
    assert _same(sam.query(context=ctx), sam.query(context=ctx, **DEFAULTS["query"]))
    pattern = _i64([7, 1])
    assert sam.count(pattern) == sam.count(pattern, **DEFAULTS["count"]) == 20


def test_datastore_signature_defaults_are_the_core_defaults():
    store = _core.Datastore.build(_rich_text())
    ctx = _i64([0, 7])
    implicit = store.query(ctx)
    assert _same(implicit, store.query(ctx, **DEFAULTS["datastore_query"]))
    assert implicit.tokens.shape == (4, 4)
    assert implicit.count[0] == 20  # uncapped: counts are precomputed
    pattern = _i64([7, 1])
    assert store.count(pattern) == store.count(pattern, **DEFAULTS["count"]) == 20


def test_retrieve_signature_defaults_are_the_core_defaults():
    autos = [_core.SuffixAutomaton(_rich_text()), _core.SuffixAutomaton(_i64([3, 4, 3]))]
    d = DEFAULTS["query"]
    implicit = _core.retrieve(autos, d["k"], d["length"])
    assert _same(implicit, _core.retrieve(autos, **d))
    for b, a in enumerate(autos):
        one = a.query()
        n = int(one.num)
        assert implicit.num[b] == n
        assert np.array_equal(implicit.tokens[b, :n], one.tokens)
        assert np.array_equal(implicit.count[b, :n], one.count)


def test_min_match_and_max_levels_defaults_bind():
    # the own text's longest repeated suffix is one token long: min_match 1 proposes it
    assert int(_core.SuffixAutomaton(_i64([5, 6, 5])).query().num) == 1
    assert int(_core.SuffixAutomaton(_i64([5, 6, 5])).query(min_match=2).num) == 0
    # the end "1 .. 10" and its suffixes "11-d .. 10" (d = 10 .. 1) occur earlier, each
    # length followed by a new token (200 + d): one candidate per level, 8 levels visited
    text = []
    for d in range(10, 0, -1):
        text += [100 + d, *range(11 - d, 11), 200 + d]
    sam = _core.SuffixAutomaton(_i64([*text, *range(1, 11)]))
    assert sam.query(k=20).tokens[:, 0].tolist() == list(range(210, 202, -1))
    assert int(sam.query(k=20, max_levels=10).num) == 10


# ---- padding --------------------------------------------------------------------------------
def test_single_query_arrays():
    sam = _core.SuffixAutomaton(_i64([1, 2, 3, 1, 2, 4, 1, 2]))
    c = sam.query(3, 2)
    assert c.num.shape == () and int(c.num) == 2
    assert c.tokens.shape == (2, 2) and c.lengths.shape == c.count.shape == (2,)
    empty = _core.SuffixAutomaton().query(3, 5)
    assert empty.tokens.shape == (0, 5) and int(empty.num) == 0
    # a corpus candidate ends at a document boundary: padded with -1
    store = _core.Datastore.build(_i64([1, 2, 3, -1, 1, 2, 4, 5]))
    c = store.query(_i64([1, 2]), 2, 3)
    assert c.tokens.tolist() == [[3, -1, -1], [4, 5, -1]]
    assert c.lengths.tolist() == [1, 2]


def test_batch_arrays_are_padded_past_each_row():
    autos = [_core.SuffixAutomaton(_i64(t)) for t in ([4, 4, 4], [], [1, 2, 1, 3, 1])]
    c = _core.retrieve(autos, 3, 2)
    assert c.tokens.shape == (3, 3, 2) and c.num.tolist() == [1, 0, 2]
    assert c.tokens[0].tolist() == [[4, 4], [-1, -1], [-1, -1]]
    assert (c.tokens[1] == -1).all() and (c.lengths[1] == 0).all()
    assert c.lengths[2].tolist() == [2, 2, 0] and c.match_len[2, 2] == 0
    none = _core.retrieve([], 3, 2)
    assert none.tokens.shape == (0, 3, 2) and none.num.shape == (0,)


# ---- the datastore cursor -------------------------------------------------------------------
def test_cursor_follows_each_automaton_across_steps():
    rng = np.random.default_rng(0)
    store = _core.Datastore.build(_i64(rng.integers(0, 6, 400)))
    texts = [list(rng.integers(0, 6, 3)) for _ in range(3)]
    autos = [_core.SuffixAutomaton(_i64(t)) for t in texts]
    for step in range(12):
        got = _core.retrieve(autos, 3, 4, datastore=store, count_cap=7)
        # fresh automata (fresh cursors) over the same texts propose the same
        fresh = [_core.SuffixAutomaton(_i64(t)) for t in texts]
        assert _same(got, _core.retrieve(fresh, 3, 4, datastore=store, count_cap=7))
        assert got.num.min() >= 1  # the corpus holds every short suffix
        for a, t in zip(autos, texts, strict=True):
            new = list(rng.integers(0, 6, 1 + step % 3))
            a.extend(_i64(new))
            t += new


def test_switching_datastores_restarts_the_cursor(tmp_path):
    first = _core.Datastore.build(_i64([1, 2, 3, 4]))
    second = _core.Datastore.build(_i64([1, 2, 9, 9, 5, 6, 8]))
    sam = _core.SuffixAutomaton(_i64([0, 1, 2]))
    a = _core.retrieve([sam], 2, 2, datastore=first)
    assert a.tokens[0].tolist() == [[3, 4], [-1, -1]]
    sam.extend(_i64([7, 5, 6]))
    b = _core.retrieve([sam], 2, 2, datastore=second)
    assert b.tokens[0].tolist() == [[8, -1], [-1, -1]] and b.match_len[0, 0] == 2
    c = _core.retrieve([sam], 2, 2, datastore=first)
    assert int(c.num[0]) == 0  # "6" never occurs in the first corpus
    sam.extend(_i64([1, 2]))
    d = _core.retrieve([sam], 2, 2, datastore=first)
    assert d.tokens[0].tolist() == [[7, 5], [3, 4]]  # own text first on ties
    # the same corpus loaded again is another datastore, with the same answers
    first.save(tmp_path / "first.rrds")
    again = _core.Datastore.load(tmp_path / "first.rrds")
    assert _same(d, _core.retrieve([sam], 2, 2, datastore=again))
    assert _same(d, _core.retrieve([sam], 2, 2, datastore=first))


def test_one_automaton_may_fill_several_rows():
    store = _core.Datastore.build(_i64([5, 6, 7, 8]))
    sam = _core.SuffixAutomaton(_i64([1, 5, 6]))
    one = _core.retrieve([sam], 2, 3, datastore=store)
    many = _core.retrieve([sam, sam, sam], 2, 3, datastore=store)
    assert many.num.tolist() == [int(one.num[0])] * 3
    assert all(np.array_equal(row, one.tokens[0]) for row in many.tokens)


# ---- errors ---------------------------------------------------------------------------------
def test_binding_errors_keep_their_wording():
    sam = _core.SuffixAutomaton(_i64([1, 2, 1]))
    with pytest.raises(RedrafterError, match=r"^automata\[1\]: expected a SuffixAutomaton$"):
        _core.retrieve([sam, object()], 2, 2)
    with pytest.raises(RedrafterError, match=r"^k must be >= 0, got -1$"):
        _core.retrieve([sam], -1, 2)
    with pytest.raises(RedrafterError, match=r"^count_cap must be >= 0, got -1$"):
        sam.query(count_cap=-1)
    with pytest.raises(RedrafterError, match=r"^k \* length: the candidates of 2 rows"):
        _core.retrieve([sam, sam], 2**12, 2**12)
    with pytest.raises(RedrafterError, match=r"^context\[0\] = -1 is out of range"):
        sam.query(context=_i64([-1]))
    with pytest.raises(TypeError):
        sam.query(k=None)


# ---- the GIL is released around compute -----------------------------------------------------
def test_threads_query_their_own_automata():
    rng = np.random.default_rng(1)
    texts = [rng.integers(0, 4, 3000) for _ in range(4)]
    store = _core.Datastore.build(_i64(rng.integers(0, 4, 3000)))
    want = [_core.retrieve([_core.SuffixAutomaton(t)], 4, 6, datastore=store) for t in texts]
    got: list = [None] * len(texts)

    def work(i: int) -> None:
        sam = _core.SuffixAutomaton(texts[i])
        for _ in range(20):
            got[i] = _core.retrieve([sam], 4, 6, datastore=store)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(_same(g, w) for g, w in zip(got, want, strict=True))
