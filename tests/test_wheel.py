"""The package as users get it: `maturin build --release` makes one abi3 wheel (CPython >= 3.10)
that installs and runs without a Rust toolchain, and `maturin sdist` holds everything needed to
build it from source.

The wheel is installed into a fresh virtual environment that sees the system site-packages (for
torch, transformers, ...), where an editable install of this checkout may also live: the check
script therefore proves that `redrafter_rs` and its compiled `_core` were imported from the venv,
not from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "redrafter_rs"
DRAFTER_CONFIG = "redrafter_rs/assets/smollm2-135m-instruct-drafter/config.json"
MATURIN = shutil.which("maturin")
needs_maturin = pytest.mark.skipif(
    MATURIN is None, reason="maturin is not installed (pip install maturin): nothing builds wheels"
)

# Run by the venv's python, from a directory outside the checkout, with no Rust tools on PATH.
CHECK_SCRIPT = r"""
import importlib.metadata
import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import redrafter_rs as rr
from redrafter_rs import _core
from redrafter_rs.assets import DEFAULT_DRAFTER

venv = Path(sys.prefix).resolve()
assert venv != Path(sys.base_prefix).resolve(), "not running inside the venv"
for tool in ("cargo", "rustc"):
    assert shutil.which(tool) is None, f"{tool} is still on PATH"


def in_venv(path):
    return Path(path).resolve().is_relative_to(venv)


# the wheel's files, not the checkout's (an editable install is visible through system site)
assert in_venv(rr.__file__), rr.__file__
assert in_venv(_core.__file__), _core.__file__
assert "abi3" in Path(_core.__file__).name, _core.__file__
dist = importlib.metadata.distribution("redrafter-rs")
assert in_venv(dist.locate_file("redrafter_rs")), dist.locate_file("redrafter_rs")
version = importlib.metadata.version("redrafter-rs")
assert _core.__version__ == version == rr.__version__, (_core.__version__, version)

# data files shipped in the package
package = Path(rr.__file__).parent
for name in ("py.typed", "_core.pyi", "train_data"):
    assert (package / name).exists(), name
assert in_venv(DEFAULT_DRAFTER / "config.json") and (DEFAULT_DRAFTER / "config.json").is_file()
assert (DEFAULT_DRAFTER / "model.safetensors").is_file()

# a tiny random Llama: speculative greedy output equals model.generate, token for token
torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    initializer_range=0.2, bos_token_id=0, eos_token_id=1, pad_token_id=1,
)
model = LlamaForCausalLM(config).eval()
drafter = rr.RecurrentDrafter.for_target(model).eval()
input_ids = torch.randint(2, 128, (1, 12))
want = model.generate(input_ids, do_sample=False, max_new_tokens=24)
for kwargs in ({}, {"beam_width": 2, "beam_length": 3, "retrieval": True}):
    out = rr.generate(model, drafter, input_ids, max_new_tokens=24, **kwargs)
    assert torch.equal(out.sequences, want), (kwargs, out.sequences.tolist(), want.tolist())
# the Rust linear kernels, against the accelerated model's own model.generate
rr.accelerate(model)
want = model.generate(input_ids, do_sample=False, max_new_tokens=24)
assert torch.equal(rr.generate(model, drafter, input_ids, max_new_tokens=24).sequences, want)
print("wheel OK", version, Path(_core.__file__).name)
"""


def _run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Runs `cmd`; a failure shows its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _without_rust_env(bin_dir: Path) -> dict[str, str]:
    """The environment minus every PATH directory holding cargo or rustc, the Rust homes and
    PYTHONPATH, with `bin_dir` (the venv's) first on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "CARGO_HOME", "RUSTUP_HOME", "VIRTUAL_ENV"}
    }
    dirs = [
        d
        for d in env.get("PATH", "").split(os.pathsep)
        if d and all(shutil.which(tool, path=d) is None for tool in ("cargo", "rustc"))
    ]
    env["PATH"] = os.pathsep.join([str(bin_dir), *dirs])
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`maturin build --release` into a temporary folder (cargo's own target dir: incremental)."""
    out = tmp_path_factory.mktemp("wheel")
    cmd = [MATURIN, "build", "--release", "--interpreter", sys.executable, "--out", str(out)]
    _run(cmd, timeout=1800, cwd=ROOT)
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@needs_maturin
@pytest.mark.slow
def test_wheel_is_abi3_and_carries_the_package_data(wheel):
    name, _version, python_tag, abi_tag, _platform = wheel.stem.split("-")
    assert (name, python_tag, abi_tag) == ("redrafter_rs", "cp310", "abi3"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        files = set(zf.namelist())
    # one compiled _core, the abi3 one (no stale per-version build of the editable install)
    extensions = [f for f in files if f.startswith("redrafter_rs/_core.") and f[-4:] != ".pyi"]
    assert len(extensions) == 1, extensions
    assert ".abi3." in extensions[0] or extensions[0].endswith(".pyd"), extensions
    shipped = {
        f"redrafter_rs/{p.relative_to(PACKAGE).as_posix()}"
        for sub in ("assets", "train_data")
        for p in (PACKAGE / sub).rglob("*")
        if p.is_file()
    }
    want = shipped | {DRAFTER_CONFIG, "redrafter_rs/py.typed", "redrafter_rs/_core.pyi"}
    assert want <= files, sorted(want - files)
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]


@needs_maturin
@pytest.mark.slow
def test_wheel_installs_and_runs_without_rust(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], timeout=300)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    env = _without_rust_env(bin_dir)
    pip = [str(python), "-m", "pip", "install", "--no-index", "--no-deps"]
    _run([*pip, "--disable-pip-version-check", str(wheel)], timeout=300, env=env, cwd=tmp_path)
    script = tmp_path / "check_wheel.py"
    script.write_text(CHECK_SCRIPT)
    proc = _run([str(python), str(script)], timeout=600, env=env, cwd=tmp_path)
    assert "wheel OK" in proc.stdout
    # the console script the wheel declares
    redrafter = shutil.which("redrafter", path=str(bin_dir))
    assert redrafter is not None
    assert "demo" in _run([redrafter, "--help"], timeout=300, env=env, cwd=tmp_path).stdout


@needs_maturin
def test_sdist_holds_the_whole_source(tmp_path):
    _run([MATURIN, "sdist", "--out", str(tmp_path)], timeout=600, cwd=ROOT)
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as tf:
        files = {m.name.split("/", 1)[1] for m in tf.getmembers() if m.isfile()}
    want = {
        "Cargo.toml",
        "Cargo.lock",
        "pyproject.toml",
        "README.md",
        "crates/redrafter-core/Cargo.toml",
        "crates/redrafter-core/src/lib.rs",
        "crates/redrafter-kernels/Cargo.toml",
        "crates/redrafter-kernels/src/lib.rs",
        "crates/redrafter-py/Cargo.toml",
        "crates/redrafter-py/src/lib.rs",
        "python/redrafter_rs/__init__.py",
        "python/redrafter_rs/_core.pyi",
        "python/redrafter_rs/py.typed",
        f"python/{DRAFTER_CONFIG}",
    }
    if (ROOT / "LICENSE").is_file():
        want.add("LICENSE")
    # every source file on disk, not only the ones named above
    for folder in ("crates", "python"):
        for p in (ROOT / folder).rglob("*"):
            rel = p.relative_to(ROOT).as_posix()
            if p.suffix in {".rs", ".py", ".pyi", ".json", ".toml"} and "__pycache__" not in rel:
                want.add(rel)
    assert want <= files, sorted(want - files)
    assert not [f for f in files if f.endswith((".so", ".pyd", ".pyc"))], files
