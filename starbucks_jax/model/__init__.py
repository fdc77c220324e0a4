"""Encoders and what they share: each family's config and forward pass (`bert.py`) with its parameter
names (`bert_names.py`), the registry that maps `model_type` to a family (`registry.py`), pooling and the
Matryoshka cut, dense layers, dropout and the MLM head."""
