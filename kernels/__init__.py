"""Triton kernels (imported as barrierkit.kernels); they import triton and torch, never barrierkit."""
