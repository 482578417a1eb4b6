"""Numerical error of a model's number formats, measured by functional emulation.

The metric (an objective the explorer can minimise) is the relative L2 error of one decoder
layer's output when weights, activations and KV cache are stored in the model's formats, against
the same layer computed in float64 from the same random weights and inputs. The layer is a
width-reduced copy of the model's first layer of each kind present (``d_model`` cut to at most
``width`` by an integer factor, every other width scaled alike, head dims and ratios kept), so the
measurement runs in milliseconds; the error of round-to-nearest storage depends on the formats
and the value distributions, not on the width. Deterministic in ``seed``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...errors import ShapeError
from ..builder import build_trace
from ..layers import period_of
from ..model import ModelSpec
from ..phases import Prefill
from ..trace import Trace
from .formats import relative_error
from .reference import execute, init_weights

ALIGN = 128  # reduced widths stay multiples of this, so group-scaled formats (int4-g128, MX) apply


def reduced(model: ModelSpec, width: int = 256) -> ModelSpec:
    """One layer of each kind of ``model`` (one period of a hybrid), ``d_model`` cut to ``width``
    and every other width divided alike and rounded up to a multiple of 128; head dims, heads per
    KV head and state sizes kept."""
    d = min(model.d_model, width)
    f = model.d_model / d

    def cut(v: int) -> int:
        return max(ALIGN, -(-int(v / f) // ALIGN) * ALIGN) if v else 0

    kinds = model.layer_kinds()
    period = period_of(kinds)
    runs = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
    n_layers = period if period < len(kinds) else len(runs)
    kv = max(1, int(model.n_kv_heads / f))
    return replace(
        model, name=f"{model.name}-reduced", d_model=d, n_kv_heads=kv, n_heads=kv * model.q_per_kv,
        d_ff=cut(model.d_ff), d_ff_expert=cut(model.d_ff_expert), vocab_size=min(model.vocab_size, 512),
        n_layers=n_layers, first_dense_layers=min(model.first_dense_layers, 1), q_lora_rank=cut(model.q_lora_rank),
        kv_lora_rank=cut(model.kv_lora_rank), ssm_dt_rank=cut(model.dt_rank) if model.ssm_kind else 0,
        n_experts=min(model.n_experts, 8), experts_per_token=min(model.experts_per_token, 2),
        max_seq_len=min(model.max_seq_len, 4096),
    )


def _layers_only(trace: Trace) -> Trace:
    """The trace without its head: the last op is the last layer's residual add."""
    return Trace(trace.name, trace.phase, [b for b in trace.blocks if b.name != "head"], trace.tokens, trace.meta)


def layer_error(model: ModelSpec, seed: int = 0, tokens: int = 16, width: int = 256) -> float:
    """Relative error of the reduced layer(s)' output with the model's formats vs float64."""
    small = reduced(model, width)
    trace = _layers_only(build_trace(small, Prefill(1, tokens)))
    weights = init_weights(trace, seed)
    ids = np.random.default_rng(seed).integers(0, small.vocab_size, size=(1, tokens))
    exact, _ = execute(trace, weights, ids)
    try:
        stored, _ = execute(trace, weights, ids, emulate_formats=True)
    except ShapeError as e:
        raise ShapeError(f"{model.name}: cannot emulate its formats on the reduced layer ({e}); "
                         "pick a group size that divides the reduced widths") from None
    return relative_error(exact, stored)
