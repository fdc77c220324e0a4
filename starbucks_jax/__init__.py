"""starbucks_jax: 2D Matryoshka (Starbucks) text embedding models in JAX/Flax."""

__version__ = "0.1.0"
