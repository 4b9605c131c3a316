"""Triton kernels and their torch references (installed as ``neo.kernels``)."""
