"""Linux's permission for Intel AMX, asked for before vLLM's CPU kernels use AMX tiles.

A process must ask the kernel for AMX state (arch_prctl ARCH_REQ_XCOMP_PERM) before its first
tile instruction, or that instruction is an illegal one. vLLM 0.32's CPU attention picks its AMX
kernel on such CPUs (bf16, block size a multiple of 32) and does not ask: PyTorch asks the first
time oneDNN runs a bf16 matmul, which a LoRA load happens to do. Measured on a Xeon with
amx_bf16 (2026-12-02): a server with --enable-lora whose first request came before any adapter
load lost its model worker to SIGILL (exit code -4), and the whole server with it; with the
permission asked for at start, the same request answered 200.
"""

from __future__ import annotations


def allow() -> bool:
    """Ask for AMX state in this process where the CPU has AMX; True when it was granted."""
    import torch

    cpu = torch.cpu
    if not (hasattr(cpu, "_is_amx_tile_supported") and cpu._is_amx_tile_supported()):
        return False
    return bool(cpu._init_amx())
