"""The dtype a model computes in when it only answers (`deploy.precision`, `eval.precision`): bf16 where
the CPU does bf16 matrix products in hardware, fp32 elsewhere. Training keeps `train.precision`."""

from __future__ import annotations

from typing import Any

import torch


def native_bf16() -> bool:
    """Does this CPU compute bf16 matrix products in hardware (AVX512-BF16 or AMX)? Elsewhere torch
    emulates bf16, slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def inference_dtype(precision: str) -> torch.dtype:
    """auto is bf16 where the CPU has it natively, else fp32."""
    if precision == "auto":
        return torch.bfloat16 if native_bf16() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def for_inference(model: Any, precision: str) -> Any:
    """The model in `precision`'s dtype, in eval mode (a no-op cast when it already is)."""
    return model.to(inference_dtype(precision)).eval()
