"""Retrieval datastores: building one from documents (`build_datastore`, `read_documents`) and
the `redrafter datastore build` command. The file format and the index live in the Rust core
(docs/design.md §5-§6); `RetrievalDrafter` (drafters/retrieval.py) queries them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from redrafter_rs import _core
from redrafter_rs._common import read_jsonl
from redrafter_rs.errors import RedrafterError, check


def build_datastore(documents: Iterable[str | Sequence[int]], tokenizer=None) -> _core.Datastore:
    """Index documents (texts, tokenized with `tokenizer`, or token-id lists) into a
    `Datastore`; no continuation crosses a document boundary."""
    parts: list[np.ndarray] = []
    for doc in documents:
        if isinstance(doc, str):
            check(tokenizer is not None, "build_datastore: text documents need a tokenizer")
            doc = tokenizer(doc, add_special_tokens=False)["input_ids"]
        parts.append(np.asarray(doc, dtype=np.int64))
        parts.append(np.array([-1], dtype=np.int64))
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    check(bool((tokens >= -1).all()), "build_datastore: token ids must be >= 0")
    check(
        bool((tokens >= 0).any()),
        f"build_datastore: nothing to index: the {len(parts) // 2} document(s) hold no tokens",
    )
    return _core.Datastore.build(tokens)


def read_documents(paths: Sequence[str | Path], field: str = "text") -> Iterator[str]:
    """Documents of text files (one per file) and JSONL files (one per line, `field`)."""
    for path in map(Path, paths):
        check(path.is_file(), f"datastore build: {path} not found")
        if path.suffix != ".jsonl":
            yield path.read_text(encoding="utf-8")
            continue
        for i, row in read_jsonl(path):
            value = row.get(field)
            check(value is not None, f"{path}:{i}: no field {field!r}")
            yield "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _tokenizer(name: str):
    from transformers import AutoTokenizer

    from redrafter_rs.models import DEFAULT_MODEL, cache_dir, load_default_model

    if name in ("default", DEFAULT_MODEL):
        path = cache_dir() / "models" / DEFAULT_MODEL
        if not (path / "tokenizer_config.json").is_file():
            return load_default_model()[1]  # converts the shipped GGUF once
        name = str(path)
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise RedrafterError(
            f"--tokenizer {name!r}: cannot load a tokenizer from it (a local directory with "
            f"tokenizer files, or 'default'; no model hub is reached): {e}"
        ) from e


def cmd_datastore_build(args: argparse.Namespace) -> int:
    """Build a retrieval datastore from text (.txt: one document) or JSONL files."""
    t = time.perf_counter()
    for path in map(Path, args.inputs):
        check(path.is_file(), f"datastore build: {path} not found")
    tok = _tokenizer(args.tokenizer)
    store = build_datastore(read_documents(args.inputs, args.field), tok)
    store.save(args.output)
    size = Path(args.output).stat().st_size
    print(
        f"{args.output}: {store.num_tokens} tokens, {store.num_docs} documents, "
        f"{store.num_states} states, {size / 1e6:.1f} MB ({time.perf_counter() - t:.1f} s)",
        file=sys.stderr,
    )
    return 0


def add_datastore_parser(sub) -> None:
    """`redrafter datastore build ...` (called by cli.build_parser)."""
    ds = sub.add_parser("datastore", help="retrieval datastores")
    dsub = ds.add_subparsers(dest="datastore_command", required=True)
    build = dsub.add_parser("build", help=cmd_datastore_build.__doc__)
    build.add_argument("inputs", nargs="+", help=".txt (one document) or .jsonl files")
    build.add_argument("--output", "-o", required=True, help="datastore file to write")
    build.add_argument("--field", default="text", help="JSONL field holding the text")
    build.add_argument("--tokenizer", default="default", help="'default' or a HF tokenizer")
    build.set_defaults(func=cmd_datastore_build)
