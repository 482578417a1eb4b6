"""Constructors of the common ops (linear layers, norms, residual adds, concatenation) and the
FLOPs per element of the streaming ops, shared by every layer type's trace builder.

Linear weights are stored (out, in) as ``torch.nn.Linear`` does: dims ``(n, k)``.
"""

from __future__ import annotations

from .einsum import Op, Tensor
from .model import ModelSpec

#: FLOPs per element of the streaming ops (counted as in LLMCompass-style analytical models:
#: one per add/multiply/exp/max/divide).
NORM_FLOPS = {"rmsnorm": 4.0, "layernorm": 7.0}
SOFTMAX_FLOPS = 5.0  # max, subtract, exp, sum, divide
ACT_FLOPS = {("silu", True): 5.0, ("gelu", False): 8.0, ("gelu", True): 9.0, ("silu", False): 4.0,
             ("relu", False): 1.0, ("relu", True): 2.0, ("relu2", False): 2.0, ("relu2", True): 3.0}
ROPE_FLOPS = 3.0  # two multiplies and one add per element
ROUTE_FLOPS = 6.0  # per (token, expert) score: exp or sigmoid, normalise, compare for top-k


def linear(name: str, m: int, n: int, k: int, x: str, w: str, out: str, wdt: str, adt: str) -> Op:
    return Op(
        name, "matmul", (("m", m), ("n", n), ("k", k)),
        (Tensor(x, ("m", "k"), adt), Tensor(w, ("n", "k"), wdt, "weight")),
        Tensor(out, ("m", "n"), adt),
    )


def norm(name: str, model: ModelSpec, m: int, x: str, out: str, prefix: str, d: int = 0) -> Op:
    """Norm over the last dim (``d``, default the model width) with its gain (and bias)."""
    adt, wdt = model.act_dtype, model.param_dtype
    params = [Tensor(f"{prefix}.weight", ("d",), wdt, "weight")]
    if model.norm == "layernorm":
        params.append(Tensor(f"{prefix}.bias", ("d",), wdt, "weight"))
    return Op(
        name, "norm", (("m", m), ("d", d or model.d_model)),
        (Tensor(x, ("m", "d"), adt), *params), Tensor(out, ("m", "d"), adt),
        NORM_FLOPS[model.norm], {"type": model.norm, "eps": model.norm_eps},
    )


def add(name: str, m: int, d: int, a: str, b: str, out: str, adt: str) -> Op:
    return Op(name, "elementwise", (("m", m), ("d", d)),
              (Tensor(a, ("m", "d"), adt), Tensor(b, ("m", "d"), adt)), Tensor(out, ("m", "d"), adt),
              1.0, {"function": "add"})


def concat(name: str, lead: tuple[tuple[str, int], ...], parts: tuple[tuple[str, tuple[str, ...], str, int], ...],
           out: str, adt: str, kv_dtype: str = "", kv_offset: int = 0) -> Op:
    """Concatenate along the last dim: each part ``(tensor, its lead dims, its last dim, size)`` is
    broadcast over the ``lead`` dims it lacks. A part named ``kv_latent`` is read from the KV cache
    (``kv_dtype``), starting at feature ``kv_offset`` of each row."""
    total = sum(p[3] for p in parts)
    ins = tuple(Tensor(t, (*sub, last), kv_dtype or adt, "kv") if t == "kv_latent" else Tensor(t, (*sub, last), adt)
                for t, sub, last, _ in parts)
    dims = (*lead, *((last, size) for _, _, last, size in parts), ("cat", total))
    attrs = {"kv_offset": kv_offset} if kv_offset else {}
    return Op(name, "concat", dims, ins, Tensor(out, (*(n for n, _ in lead), "cat"), adt), 0.0, attrs)
