"""Server interceptors. The chain and its order are written once, in ``chain.py``."""
