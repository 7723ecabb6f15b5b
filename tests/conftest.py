"""Test-wide settings: CPU only, quiet TensorFlow, float64 available on request."""

import os

# Set before JAX or TensorFlow initialise: the tests run on CPU devices, also where a GPU exists,
# so numbers compare across machines.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
