"""rlvr_jax: reinforcement learning from verifiable rewards in JAX/Flax."""

import setuptools

_CORE = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "absl-py",
    "ml_collections",
    "numpy",
    "scipy",
    "transformers>=5.0",
    "tokenizers",
    "safetensors",
    "gguf>=0.17",
    "tensorflow-datasets",
    "grain",
    "math-verify>=0.9",
    "reasoning-gym",
    "matplotlib",
    "tensorboardX",
    "tqdm",
]

setuptools.setup(
    name="rlvr_jax",
    version="0.1.0",
    description="RLVR in JAX/Flax: GRPO family, DelTA, SCRL and RELEX.",
    packages=setuptools.find_packages(include=["rlvr_jax*", "experiments*"]),
    python_requires=">=3.11",
    install_requires=_CORE,
    extras_require={
        # chex: array assertions in the tests; ruff: `make test`'s lint step.
        "test": ["pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel", "chex>=0.1.92",
                 "ruff"],
        "torch": ["torch==2.13.0", "accelerate"],
        "bench": ["torch==2.13.0", "accelerate", "trl==1.16.0"],  # benchmarks/rl_step.py
        "gpu": ["jax[cuda12]"],
        # gcsfs: gs:// run folders through etils.epath (rlvr_jax/storage.py).
        "tpu": ["jax[tpu]", "gcsfs"],
    },
)
