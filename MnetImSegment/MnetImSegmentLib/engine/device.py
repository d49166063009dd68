"""Which device and precision a run uses: one answer for the CLI, the trainer and Slicer.

torch is imported inside the functions, so importing this module (as the Slicer bridge does at
start-up) never loads PyTorch.
"""

from __future__ import annotations

from ..core.errors import MnetImError


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' if PyTorch sees a CUDA GPU, else 'cpu'; 'cuda'/'gpu' without one is an error.

    Raises:
        MnetImError: A GPU was requested but none is usable (saying why), or the device is unknown.
    """
    import torch

    requested = (device or "auto").strip().lower()
    if requested == "gpu":
        requested = "cuda"
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested.startswith("cuda"):
        if torch.cuda.is_available():
            return requested
        if getattr(torch.version, "cuda", None) is None:
            why = (f"the installed PyTorch {torch.__version__} is a CPU-only build (install a CUDA build of "
                   "PyTorch; in Slicer, with the PyTorch Utils module)")
        else:
            why = "PyTorch finds no usable NVIDIA GPU or driver"
        raise MnetImError(f"A GPU (CUDA) was requested but {why}; choose device 'auto' or 'cpu'.")
    raise MnetImError(f"Unknown device '{device}': choose auto, cpu or cuda.")


def is_cuda_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the GPU failing (out of memory, driver or cuDNN error) rather than a bug."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return any(word in text for word in ("CUDA", "cuDNN", "CUBLAS", "cublas", "out of memory"))


def release_cuda_cache() -> None:
    """Free PyTorch's cached GPU memory after a GPU failure; best effort, never raises."""
    try:
        import torch

        torch.cuda.empty_cache()
    except Exception:  # the GPU is already in trouble; freeing its cache is best effort
        pass


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str) -> str:
    """'auto' -> bf16 on CUDA and on CPUs with native bf16, else fp32."""
    precision = (precision or "auto").lower()
    if precision not in ("auto", "fp32", "bf16"):
        raise MnetImError(f"Unknown precision '{precision}': use auto, fp32 or bf16.")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16"
    return "bf16" if cpu_has_bf16() else "fp32"
