"""Which ONNX Runtime execution provider runs the model, and at which precision.

- ``cpu``: CPUExecutionProvider; fp32 by default, int8 when asked (about twice as fast, mean
  cosine to fp32 about 0.995), fp16 allowed (slow; for checks).
- ``cuda``: CUDAExecutionProvider; fp16 by default (fp32 when the bundle has no fp16 graph).
  Asked for but not running is an error that says why.
- ``auto``: CUDA when it really runs, else CPU.

"Really runs": onnxruntime-gpu lists CUDAExecutionProvider as available even on a machine
where the CUDA libraries cannot load, then quietly runs on the CPU. Only the providers of a
created session (``session.get_providers()``) tell the truth, so that is what is checked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import onnxruntime as ort

from semdb.errors import ProviderError

ProviderRequest = Literal["auto", "cuda", "cpu"]
PROVIDER_REQUESTS: tuple[str, ...] = ("auto", "cuda", "cpu")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_NAMES = {"cuda": CUDA, "cpu": CPU}
GPU_INSTALL_FIX = (
    "install the GPU build of ONNX Runtime in place of the CPU one: "
    "pip uninstall -y onnxruntime && pip install 'semdb[gpu]'"
)


def check_request(provider: str) -> ProviderRequest:
    if provider not in PROVIDER_REQUESTS:
        raise ProviderError(
            f"unknown execution provider {provider!r}",
            fix=f"use one of {', '.join(PROVIDER_REQUESTS)}",
        )
    return provider  # type: ignore[return-value]


def cuda_listed() -> bool:
    """Whether this ONNX Runtime build has the CUDA provider at all (not whether it works)."""
    return CUDA in ort.get_available_providers()


def default_precision(provider: str, available: tuple[str, ...]) -> str:
    """fp16 on CUDA when the bundle has it, else fp32."""
    if provider == "cuda" and "fp16" in available:
        return "fp16"
    return "fp32"


def check_precision_for(provider: str, precision: str) -> None:
    if provider == "cuda" and precision == "int8":
        raise ProviderError(
            "int8 graphs run on the CPU provider only (ONNX Runtime's CUDA provider has no "
            "fast kernels for dynamically quantised MatMul)",
            fix="use precision fp16 or fp32 on CUDA, or provider cpu for int8",
        )


def execution_providers(provider: str, *, device_id: int = 0) -> list[Any]:
    """The ``providers`` argument of ``InferenceSession`` for ``cuda`` or ``cpu``."""
    if provider == "cuda":
        options = {"device_id": device_id, "arena_extend_strategy": "kSameAsRequested"}
        return [(CUDA, options), CPU]
    return [CPU]


def active_provider(session: ort.InferenceSession) -> str:
    """``cuda`` or ``cpu``: what the session really runs on."""
    return "cuda" if session.get_providers()[0] == CUDA else "cpu"


def cuda_unavailable_reason() -> str:
    """A best guess, in words, at why CUDA is not running here."""
    if not cuda_listed():
        return (
            f"this ONNX Runtime ({ort.__version__}, {ort.get_device()}) has no CUDA provider: "
            "the CPU package onnxruntime is installed"
        )
    if not any(Path("/dev").glob("nvidia[0-9]*")) and os.name == "posix":
        return "onnxruntime-gpu is installed but no NVIDIA GPU is visible (/dev/nvidia* absent)"
    return (
        f"onnxruntime-gpu {ort.__version__} lists the CUDA provider but could not start it: "
        "the CUDA or cuDNN libraries it was built for failed to load (ONNX Runtime logs which)"
    )


def cuda_error() -> ProviderError:
    return ProviderError(
        f"CUDA was asked for but cannot run: {cuda_unavailable_reason()}",
        fix=GPU_INSTALL_FIX
        if not cuda_listed()
        else "install the CUDA and cuDNN versions this onnxruntime-gpu needs, or use provider cpu",
    )
