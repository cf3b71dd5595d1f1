"""redrafter-rs: lossless ReDrafter speculative decoding for Hugging Face causal LMs.

import redrafter_rs as rr
drafter = rr.RecurrentDrafter.from_pretrained("path/to/drafter", target=model)
out = rr.generate(model, drafter, input_ids, max_new_tokens=128, beam_width=4, beam_length=5)
out.sequences  # == model.generate(input_ids, do_sample=False, max_new_tokens=128)
out.stats.tau  # tokens per verification step
"""

from redrafter_rs._core import Acceptance, Tree, accept, pack_beams
from redrafter_rs._core import __version__ as __version__
from redrafter_rs.drafters.datastore import build_datastore
from redrafter_rs.drafters.draft_model import DraftModelDrafter, early_exit, quantized_copy
from redrafter_rs.drafters.protocol import Drafter, DrafterAdapter
from redrafter_rs.drafters.recurrent import DrafterConfig, RecurrentDrafter
from redrafter_rs.drafters.retrieval import (
    Datastore,
    RetrievalConfig,
    RetrievalDrafter,
    SourceStats,
    SuffixAutomaton,
)
from redrafter_rs.drafters.search import beam_search, best_nodes_search
from redrafter_rs.engine.acceptor import Acceptor, ExactAcceptor, VerifiedStep
from redrafter_rs.engine.fastpath import AccelerateReport, accelerate, unaccelerate
from redrafter_rs.engine.policy import PolicyConfig
from redrafter_rs.engine.sampling import SamplingParams
from redrafter_rs.engine.scheduler import GenerationStats, Request, SpecConfig, SpeculativeGenerator
from redrafter_rs.errors import RedrafterError
from redrafter_rs.generate import GenerationOutput, generate, stream

# Training is not imported with the library (torch training loops, teacher caches): these two
# names load redrafter_rs.training.train on first use.
_LAZY = {
    "TrainConfig": "redrafter_rs.training.train",
    "train_drafter": "redrafter_rs.training.train",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'redrafter_rs' has no attribute {name!r}")


__all__ = [
    "AccelerateReport",
    "Acceptance",
    "Acceptor",
    "Datastore",
    "DraftModelDrafter",
    "Drafter",
    "DrafterAdapter",
    "DrafterConfig",
    "ExactAcceptor",
    "GenerationOutput",
    "GenerationStats",
    "PolicyConfig",
    "RecurrentDrafter",
    "RedrafterError",
    "Request",
    "RetrievalConfig",
    "RetrievalDrafter",
    "SamplingParams",
    "SourceStats",
    "SpecConfig",
    "SpeculativeGenerator",
    "SuffixAutomaton",
    "TrainConfig",
    "Tree",
    "VerifiedStep",
    "__version__",
    "accelerate",
    "accept",
    "beam_search",
    "best_nodes_search",
    "build_datastore",
    "early_exit",
    "generate",
    "pack_beams",
    "quantized_copy",
    "stream",
    "train_drafter",
    "unaccelerate",
]
