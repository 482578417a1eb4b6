"""Measured real-hardware data and the comparison of xpusim's predictions with it."""
