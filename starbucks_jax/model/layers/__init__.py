"""Layers every model family builds from: attention (`attention.py`), norms (`norms.py`), rotary position
embeddings (`rotary.py`) and MLPs (`mlp.py`). A family's forward file composes them; what differs between
families (BERT's post-norm, ModernBERT's pre-norm, a decoder's causal mask) is in the family's file, the
arithmetic is here, once.
"""
