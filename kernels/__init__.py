"""Triton GPU kernels of fastrnn (installed as fastrnn.kernels)."""
