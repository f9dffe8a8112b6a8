"""Fused Triton attention kernels: prefix tuning (joint softmax) and LLaMA-Adapter (gated prefix)."""
from kernels.prefix_attention import prefix_attention

__all__ = ["prefix_attention"]
