"""Hard-negative mining at any (layer, dim) size of a checkpoint: `mine.mine_negatives`.

training_queries.py reads the queries and their positives from a training file, select.py picks each
query's negatives from its ranked candidates, search.py encodes and searches, mine.py puts them together
and writes Tevatron groups with a summary.
"""
