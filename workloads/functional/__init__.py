"""Functional reference: numpy execution of traces and of mapped (tiled) operators."""
