"""Test configuration shared by the whole suite.

Triton only runs on CPU through its interpreter, and the switch is read when triton is first
imported, so it must be set before any test module imports the kernels.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
