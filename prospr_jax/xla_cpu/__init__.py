"""XLA:CPU workarounds: convolution and pooling variants that keep the fast path, host-memory release.

Imports jax only; models take their convolution from here (``conv_impl.resolve_conv_impl``).
"""
