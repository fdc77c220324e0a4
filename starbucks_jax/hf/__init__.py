"""Hugging Face folders: reading them (`load.py`), writing them (`save.py`), and converting weights both
ways through each family's name table (`convert.py`)."""
