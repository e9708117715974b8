"""Device resolution, peak-FLOP table for MFU, and provenance (hardware name, library versions)."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from cram_core.config import ConfigError, ImplConfig

# Dense bf16 tensor-core peak (datasheet, without sparsity), FLOP/s. Matched by substring of the
# device name, most specific first. MFU against these is the convention; `bench` also reports
# utilisation against a measured matmul rate, which is the ceiling code can actually reach.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "A6000": 155e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
    "3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def resolve_device(impl: ImplConfig) -> torch.device:
    if impl.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("impl.device=cuda but CUDA is not available here; use impl.device=cpu or auto")
    if impl.device == "cpu" or (impl.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def resolve_dtype(impl: ImplConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for plain fp32."""
    choice = impl.precision
    if choice == "auto":
        choice = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}[choice]


def check_precision(impl: ImplConfig, device: torch.device) -> None:
    """Fail before any data is prepared or written when impl.precision cannot run on ``device``."""
    if impl.precision == "fp8":
        _float8_api(device)
    stream_dtype(impl, device)


def stream_dtype(impl: ImplConfig, device: torch.device) -> torch.dtype | None:
    """The residual stream's dtype for ``CrammedBert.set_stream_dtype``: None (impl.residual_dtype=fp32) keeps the
    fp32 the embeddings and norms return under autocast; autocast is the autocast dtype. Without autocast
    there is nothing to follow, so that is an error rather than a second name for fp32."""
    if impl.residual_dtype == "fp32":
        return None
    dtype = resolve_dtype(impl, device)
    if dtype is None:
        raise ConfigError(f"impl.residual_dtype=autocast needs an autocast dtype and impl.precision={impl.precision} "
                          f"runs fp32 on {device.type}; valid here: impl.residual_dtype=fp32, or impl.precision="
                          "bf16, fp16, fp8")
    return dtype


def _float8_api(device: torch.device) -> Any:
    try:
        from torchao import float8
    except ImportError as e:
        raise ConfigError(f"impl.precision=fp8 needs torchao (pip install 'cram-sweeps[fp8]'): {e}; "
                          "valid without it: auto, fp32, bf16, fp16") from None
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise ConfigError(f"impl.precision=fp8 needs compute capability >= 8.9 (Ada, Hopper); "
                          f"{torch.cuda.get_device_name(device)} has {torch.cuda.get_device_capability(device)}; "
                          "valid here: auto, fp32, bf16, fp16")
    return float8


def apply_precision(model: torch.nn.Module, impl: ImplConfig, device: torch.device) -> torch.nn.Module:
    """Sets the model's residual-stream dtype (see ``stream_dtype``). impl.precision=fp8: the encoder blocks' linear
    layers become torchao Float8Linear (dynamic tensorwise scaling: e4m3 inputs and weights, e5m2 output
    gradients); everything else runs under bf16 autocast. The embeddings and the MLM head stay bf16: the
    decoder is the tied token table, and the output layer is the most sensitive to fp8 rounding.
    Parameters (and so the optimizer) are unchanged. Any other precision returns ``model`` itself.
    """
    model.set_stream_dtype(stream_dtype(impl, device))
    if impl.precision != "fp8":
        return model
    float8 = _float8_api(device)

    def in_blocks(module: torch.nn.Module, name: str) -> bool:
        # fp8 matmuls need both dimensions divisible by 16
        return name.startswith("blocks.") and module.in_features % 16 == 0 and module.out_features % 16 == 0

    recipe = float8.Float8LinearConfig.from_recipe_name("tensorwise")
    return float8.convert_to_float8_training(model, config=recipe, module_filter_fn=in_blocks)


def grad_scaler(amp_dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """Dynamic loss scaling for fp16 autocast, whose gradients underflow to 0 unscaled (bf16 has fp32's range)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)


def should_compile(impl: ImplConfig, device: torch.device) -> bool:
    return impl.compile == "on" or (impl.compile == "auto" and device.type == "cuda")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu} ({torch.get_num_threads()} threads)"


def peak_flops(device: torch.device) -> float | None:
    """Datasheet bf16 peak for known GPUs; None on CPU or an unknown GPU (MFU is then not reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


def measure_matmul_flops(device: torch.device, dtype: torch.dtype | None, size: int = 4096, reps: int = 10) -> float:
    """Measured dense matmul rate (FLOP/s) on this device: the practical ceiling for MFU-like figures."""
    if device.type == "cpu":
        size = min(size, 1024)
    dt = dtype or torch.float32
    a = torch.randn(size, size, device=device, dtype=dt)
    b = torch.randn(size, size, device=device, dtype=dt)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def versions() -> dict[str, str | None]:
    import numpy

    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": numpy.__version__,
    }
    try:
        import tokenizers

        out["tokenizers"] = tokenizers.__version__
    except ImportError:
        out["tokenizers"] = None
    out["code"] = code_fingerprint()
    return out


SOURCE_PACKAGES = ("cram_core", "sweeps", "analysis")


def code_fingerprint(root: Path | None = None, packages: tuple[str, ...] = SOURCE_PACKAGES) -> str | None:
    """sha256 (12 hex digits) of this project's Python sources: relative path and bytes of every ``*.py`` under
    the packages, in path order. Unlike the git SHA it names the code that ran also where the checkout's
    history is not the code's (a copied tree, a cluster node synced without .git, uncommitted edits):
    ``python -c "from cram_core.hardware import code_fingerprint as f; print(f())"`` in a checkout tells
    whether that checkout is the code a trial recorded. None when no package is found."""
    base = root or Path(__file__).resolve().parent.parent
    files = sorted(f for pkg in packages if (base / pkg).is_dir() for f in (base / pkg).rglob("*.py")
                   if "__pycache__" not in f.parts)
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(base).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def git_state(path: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit SHA, dirty flag) of the checkout holding this package, or (None, None) outside git."""
    where = path or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None, None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=where, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None
