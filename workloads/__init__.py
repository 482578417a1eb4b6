"""Workloads: model specs, phases, the Einsum operator IR, traces, and the functional reference."""

from .builder import build_trace
from .einsum import Op, Tensor
from .model import ModelSpec, list_models, load_model
from .phases import Decode, Prefill, make_phase
from .trace import Block, Trace

__all__ = [
    "Block", "Decode", "ModelSpec", "Op", "Prefill", "Tensor", "Trace",
    "build_trace", "list_models", "load_model", "make_phase",
]
