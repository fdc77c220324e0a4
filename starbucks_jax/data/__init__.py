"""Training data as a pure function of (seed, step): sources and row checks, schemas, batching, SMAE
masking, and the two kinds of batches (`srl.py`: queries and passages; `smae.py`: masked raw text)."""
