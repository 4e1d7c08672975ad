"""rlvr_jax: reinforcement learning from verifiable rewards in JAX/Flax.

docs/CONVENTIONS.md holds the one table of shape letters (B rows, G group size,
P prompt tokens, T response tokens, ...) and the layer order that imports
follow (checked by tests/test_layering.py).
"""
