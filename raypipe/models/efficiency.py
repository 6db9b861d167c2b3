"""Parameters, FLOPs and CPU latency: the paper's efficiency table, measured rather than quoted.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts
2 FLOPs per multiply-add of convolutions and matmuls (the convention of the
AttackNet paper's 22.7 MFLOPs) and ignores element-wise ops (BN, activations,
pooling), which are a rounding error for these networks.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

Size = int | tuple[int, int]


def _hw(input_size: Size) -> tuple[int, int]:
    return (input_size, input_size) if isinstance(input_size, int) else (int(input_size[0]), int(input_size[1]))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_size: Size) -> int:
    """FLOPs of one forward pass of one (3, H, W) image, in eval mode."""
    x = torch.zeros(1, 3, *_hw(input_size), device=_device(model))
    was_training = model.training
    model.eval()  # BN in eval mode accepts a batch of one
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def cpu_ms_per_face(model: nn.Module, input_size: Size, repeats: int = 20, warmup: int = 3) -> float:
    """Median CPU wall time (ms) of one forward pass on one face, batch 1, current torch threads.

    A model on another device is copied to the CPU first; the original is untouched.
    """
    cpu_model = model if _device(model).type == "cpu" else copy.deepcopy(model).cpu()
    was_training = cpu_model.training
    cpu_model.eval()
    x = torch.zeros(1, 3, *_hw(input_size))
    times: list[float] = []
    try:
        with torch.inference_mode():
            for i in range(warmup + max(1, repeats)):
                start = time.perf_counter()
                cpu_model(x)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000.0)
    finally:
        cpu_model.train(was_training)
    return statistics.median(times)


def efficiency_report(model: nn.Module, input_size: Size | None = None, repeats: int = 20) -> dict[str, Any]:
    """params, flops, mflops and cpu_ms_per_face at the model's own input size (``model.spec``)."""
    size = input_size if input_size is not None else model.spec.input_size
    flops = count_flops(model, size)
    return {
        "model": getattr(getattr(model, "spec", None), "name", type(model).__name__),
        "input_size": list(_hw(size)),
        "params": count_parameters(model),
        "flops": flops,
        "mflops": flops / 1e6,
        "cpu_ms_per_face": cpu_ms_per_face(model, size, repeats=repeats),
        "cpu_threads": torch.get_num_threads(),
    }
