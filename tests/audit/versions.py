"""Facts of the tiny model versions in conftest.py, shared with the tests."""
N_FEATURES = 12
SWAP = (2, 7)  # version 2.0 of ``lin`` swaps its first layer's columns for these features
