"""Encoding texts at any (layer, dim) size with a folder's or a workdir's model (`encoder.py`)."""
