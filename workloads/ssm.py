"""State-space mixers of one layer: Mamba-1 (selective scan, arXiv:2312.00752) and Mamba-2 (SSD,
arXiv:2405.21060), on ``xn``, producing ``ssm_out``.

Mamba-1: in-projections to x and z, causal depthwise conv1d on x (``ssm_conv`` taps), SiLU, the
x-projection to the time-step rank, B and C (with Jamba's RMS norms on them), dt projection, the
selective scan (dt = softplus(dt + bias), A = -exp(A_log), skip term D x), gate ``y * silu(z)``,
out-projection. Mamba-2: in-projections to z, x, B, C (``ssm_groups`` groups) and one dt per head,
conv1d + SiLU on x, B and C, the SSD scan with one A per head, gated RMS norm, out-projection.

In-projections that the reference implementations fuse into one matrix are separate linears here
(the same FLOPs and weight bytes). A decode step reads each layer's recurrent state (conv window
and scan state, role ``state``; its write-back is not counted, see docs/workloads.md); the scan of a
prefill runs chunk-parallel (SSD).
"""

from __future__ import annotations

import math

from ..errors import SpecError
from .einsum import Op, Tensor
from .model import ModelSpec
from .opkit import ACT_FLOPS, linear, norm
from .phases import Phase

#: per (token, channel, state) point: dt*A, exp, dt*B*x (2), state update (2), C*h accumulate (2)
SCAN_FLOPS = 9.0
SCAN_CHUNK = 256  # SSD chunk length of the reference Mamba-2 kernels


def _conv(name: str, src: str, out: str, model: ModelSpec, phase: Phase, channels: int, silu: bool = True) -> list[Op]:
    """Causal depthwise conv1d (+ SiLU unless ``silu`` is false) on ``src`` (b, q, channels),
    continuing its rolling state."""
    b, q, k = phase.batch, phase.q_len, model.ssm_conv
    adt, pdt = model.act_dtype, model.param_dtype
    offset = phase.kv_len - q
    ins = [Tensor(src, ("b", "q", "c"), adt), Tensor(f"{name}.weight", ("c", "k"), pdt, "weight"),
           Tensor(f"{name}.bias", ("c",), pdt, "weight")]
    dims = [("b", b), ("q", q), ("c", channels), ("k", k)]
    fpp = 2.0  # one MAC per (token, channel, tap)
    if offset and k > 1:  # continuing a sequence: read the last k-1 inputs (w only sizes that window)
        dims.append(("w", k - 1))
        ins.append(Tensor(f"{name}_state", ("b", "w", "c"), model.kv_dtype, "state"))
        fpp = 2.0 / (k - 1)
    conv = Op(name, "conv1d", tuple(dims), tuple(ins), Tensor(f"{out}_pre" if silu else out, ("b", "q", "c"), adt), fpp,
              {"state": f"{name}_state", "offset": offset})
    if not silu:
        return [conv]
    return [
        conv,
        Op(f"{name}_act", "activation", (("m", b * q), ("f", channels)), (Tensor(f"{out}_pre", ("m", "f"), adt),),
           Tensor(out, ("m", "f"), adt), ACT_FLOPS[("silu", False)], {"function": "silu", "gated": False}),
    ]


def fftconv_flops_per_point(total: int, q: int) -> tuple[float, str]:
    """FLOPs per output point (batch, new token, channel) of a causal long convolution over ``total``
    tokens of which ``q`` are new, and the method: ``direct`` (new token ``t`` sums ``t + 1`` products:
    ``2 total - q + 1`` per point on average) or ``fft``: one real FFT of the zero-padded input and one
    inverse (``2.5 n log2 n`` each, ``n = 2 total``) and the pointwise complex product (``3 n``), the
    filter's transform precomputed with the filter; plus 2 for the bias term ``D z``."""
    n = 2 * total
    fft = (5.0 * n * math.log2(n) + 3.0 * n) / q if n > 1 else 0.0
    direct = 2.0 * total - q + 1.0
    return (min(fft, direct) + 2.0, "fft" if fft < direct else "direct")


def hyena_ops(model: ModelSpec, phase: Phase) -> list[Op]:
    """A Hyena operator of order N (Poli et al., "Hyena Hierarchy", ICML 2023, arXiv 2302.10866): in-
    projections to the value v and the gates x_1..x_N, a short causal filter on each, then
    ``z <- x_i * (h_i conv z)`` for each order with the long implicit filters ``h_i`` (held materialised
    at ``max_seq_len``; a step reads the taps its sequence length uses), out-projection. A decode step
    reads each long convolution's input history (role ``state``, growing with the sequence)."""
    b, q = phase.batch, phase.q_len
    m, d, di, order = b * q, model.d_model, model.ssm_inner, model.hyena_order
    adt, wdt = model.act_dtype, model.weight_dtype
    offset = phase.kv_len - q
    if offset + q > model.max_seq_len:
        raise SpecError(f"model {model.name!r}: {offset + q} tokens exceed max_seq_len ({model.max_seq_len}), the length of "
                        "its long Hyena filters; use a shorter context or a model with longer filters")
    ops = [linear("hyena_in_v", m, di, d, "xn", "w_in_v", "h_v", wdt, adt)]
    ops += [linear(f"hyena_in_x{i}", m, di, d, "xn", f"w_in_x{i}", f"h_x{i}", wdt, adt) for i in range(1, order + 1)]
    ops += _conv("short_v", "h_v", "h_va", model, phase, di, silu=False)
    for i in range(1, order + 1):
        ops += _conv(f"short_x{i}", f"h_x{i}", f"h_x{i}a", model, phase, di, silu=False)
    z = "h_va"
    for i in range(1, order + 1):
        fpp, method = fftconv_flops_per_point(offset + q, q)
        ins = [Tensor(z, ("b", "q", "c"), adt), Tensor(f"hyena_filter{i}", ("l", "c"), model.param_dtype, "weight"),
               Tensor(f"hyena_D{i}", ("c",), model.param_dtype, "weight")]
        dims = [("b", b), ("q", q), ("c", di), ("l", offset + q)]  # the filter taps the step uses
        if offset:
            dims.append(("s", offset))
            ins.append(Tensor(f"hyena_hist{i}", ("b", "s", "c"), model.kv_dtype, "state"))
        # the l and s dimensions only size the filter and the history: the FLOPs are per (b, q, c) point
        spread = (offset + q) * (offset or 1)
        ops.append(Op(f"long_conv{i}", "fftconv", tuple(dims), tuple(ins), Tensor(f"h_y{i}", ("b", "q", "c"), adt),
                      fpp / spread, {"state": f"hyena_hist{i}", "offset": offset, "method": method,
                                     "filter_rows": model.max_seq_len}))
        ops.append(Op(f"hyena_gate{i}", "elementwise", (("m", m), ("f", di)),
                      (Tensor(f"h_x{i}a", ("m", "f"), adt), Tensor(f"h_y{i}", ("m", "f"), adt)),
                      Tensor(f"h_z{i}", ("m", "f"), adt), 1.0, {"function": "mul"}))
        z = f"h_z{i}"
    ops.append(linear("ssm_out_proj", m, d, di, z, "w_out", "ssm_out", wdt, adt))
    return ops


def ssm_ops(model: ModelSpec, phase: Phase) -> list[Op]:
    """The SSM mixer of one layer."""
    if model.ssm_kind == "hyena":
        return hyena_ops(model, phase)
    b, q = phase.batch, phase.q_len
    m, d, di, n = b * q, model.d_model, model.ssm_inner, model.ssm_state
    adt, wdt = model.act_dtype, model.weight_dtype
    offset = phase.kv_len - q
    gate = (("m", m), ("f", di))
    if model.ssm_kind == "mamba1":
        r = model.dt_rank
        ops = [linear("ssm_in_x", m, di, d, "xn", "w_in_x", "s_x", wdt, adt),
               linear("ssm_in_z", m, di, d, "xn", "w_in_z", "s_z", wdt, adt),
               *_conv("conv_x", "s_x", "s_xa", model, phase, di),
               linear("ssm_x_dt", m, r, di, "s_xa", "w_x_dt", "s_dtl", wdt, adt),
               linear("ssm_x_B", m, n, di, "s_xa", "w_x_B", "s_B", wdt, adt),
               linear("ssm_x_C", m, n, di, "s_xa", "w_x_C", "s_C", wdt, adt)]
        dtl, bn, cn = "s_dtl", "s_B", "s_C"
        if model.ssm_inner_norms:  # Jamba: RMS norms on dt, B and C
            ops += [norm("dt_norm", model, m, "s_dtl", "s_dtl_n", "dt_norm", r),
                    norm("B_norm", model, m, "s_B", "s_B_n", "B_norm", n),
                    norm("C_norm", model, m, "s_C", "s_C_n", "C_norm", n)]
            dtl, bn, cn = "s_dtl_n", "s_B_n", "s_C_n"
        ops.append(linear("ssm_dt_proj", m, di, r, dtl, "w_dt", "s_dt", wdt, adt))
        dims = [("b", b), ("q", q), ("c", di), ("n", n)]
        ins = [Tensor("s_xa", ("b", "q", "c"), adt), Tensor("s_dt", ("b", "q", "c"), adt),
               Tensor(bn, ("b", "q", "n"), adt), Tensor(cn, ("b", "q", "n"), adt),
               Tensor("A_log", ("c", "n"), model.param_dtype, "weight"), Tensor("D", ("c",), model.param_dtype, "weight"),
               Tensor("dt_bias", ("c",), model.param_dtype, "weight")]
        if offset:
            ins.append(Tensor("ssm_state", ("b", "c", "n"), model.kv_dtype, "state"))
        ops.append(Op("scan", "scan", tuple(dims), tuple(ins), Tensor("s_y", ("b", "q", "c"), adt), SCAN_FLOPS,
                      {"ssm": "mamba1", "state": "ssm_state", "offset": offset, "chunk": SCAN_CHUNK}))
        ops.append(Op("ssm_gate", "activation", gate, (Tensor("s_z", ("m", "f"), adt), Tensor("s_y", ("m", "f"), adt)),
                      Tensor("s_g", ("m", "f"), adt), ACT_FLOPS[("silu", True)], {"function": "silu", "gated": True}))
        ops.append(linear("ssm_out_proj", m, d, di, "s_g", "w_out", "ssm_out", wdt, adt))
        return ops
    g, h, p = model.ssm_groups, model.ssm_heads, model.ssm_head_dim
    ops = [linear("ssm_in_z", m, di, d, "xn", "w_in_z", "s_z", wdt, adt),
           linear("ssm_in_x", m, di, d, "xn", "w_in_x", "s_x", wdt, adt),
           linear("ssm_in_B", m, g * n, d, "xn", "w_in_B", "s_B", wdt, adt),
           linear("ssm_in_C", m, g * n, d, "xn", "w_in_C", "s_C", wdt, adt),
           linear("ssm_in_dt", m, h, d, "xn", "w_in_dt", "s_dt", wdt, adt),
           *_conv("conv_x", "s_x", "s_xa", model, phase, di),
           *_conv("conv_B", "s_B", "s_Ba", model, phase, g * n),
           *_conv("conv_C", "s_C", "s_Ca", model, phase, g * n)]
    dims = [("b", b), ("q", q), ("h", h), ("p", p), ("g", g), ("n", n)]
    ins = [Tensor("s_xa", ("b", "q", "h", "p"), adt), Tensor("s_dt", ("b", "q", "h"), adt),
           Tensor("s_Ba", ("b", "q", "g", "n"), adt), Tensor("s_Ca", ("b", "q", "g", "n"), adt),
           Tensor("A_log", ("h",), model.param_dtype, "weight"), Tensor("D", ("h",), model.param_dtype, "weight"),
           Tensor("dt_bias", ("h",), model.param_dtype, "weight")]
    if offset:
        ins.append(Tensor("ssm_state", ("b", "h", "p", "n"), model.kv_dtype, "state"))
    # the g dimension only indexes B and C (each head reads its group's): per (b, q, h, p, n) point
    # the scan does SCAN_FLOPS
    ops.append(Op("scan", "scan", tuple(dims), tuple(ins), Tensor("s_y", ("b", "q", "h", "p"), adt), SCAN_FLOPS / g,
                  {"ssm": "mamba2", "state": "ssm_state", "offset": offset, "chunk": SCAN_CHUNK}))
    ops += [Op("ssm_gate", "activation", gate, (Tensor("s_z", ("m", "f"), adt), Tensor("s_y", ("m", "f"), adt)),
               Tensor("s_g", ("m", "f"), adt), ACT_FLOPS[("silu", True)], {"function": "silu", "gated": True}),
            norm("ssm_norm", model, m, "s_g", "s_gn", "ssm_norm", di),
            linear("ssm_out_proj", m, d, di, "s_gn", "w_out", "ssm_out", wdt, adt)]
    return ops
