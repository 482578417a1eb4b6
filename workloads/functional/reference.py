"""Numpy execution of a whole :class:`~xpusim.workloads.trace.Trace` on real tensors.

Each op kind has its numpy kernel; a tensor flowing between ops is reshaped (row-major) into the
consumer's view. Weights of a repeated block are per repeat: ``layer.3.wq`` is ``wq`` of the fourth
layer. The KV cache is a dict ``{"layer.i.k_cache": (b, s, h, e), ...}`` that decode steps extend.
Arithmetic is float64 (number formats are emulated separately).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...errors import ShapeError, SpecError
from ..einsum import Op, Tensor
from ..trace import Trace
from . import moe, ssm
from .formats import quantize

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def weight_shape(op: Op, t: Tensor) -> tuple[int, ...]:
    """The stored shape of a weight operand (embedding tables hold every row, not the gathered ones)."""
    if op.kind == "embedding" and t.name == "embed_table":
        return (op.attrs["rows"], op.sizes["d"])
    if op.kind == "embedding" and t.name == "pos_table":
        return (op.attrs["pos_rows"], op.sizes["d"])
    if op.kind == "fftconv" and t.name.startswith("hyena_filter"):  # materialised at max_seq_len; a step reads l taps
        return (op.attrs["filter_rows"], op.sizes["c"])
    if "experts_total" in op.attrs:  # expert weights are stored for every expert, not the group's
        return tuple(op.attrs["experts_total"] if d == "x" else op.sizes[d] for d in t.dims)
    return tuple(op.sizes[d] for d in t.dims)


#: blocks that are not repeated layers: their weights keep plain names (shared embeddings)
SHARED_BLOCKS = ("embed", "head", "dec_embed", "encoder_bias", "decoder_bias", "encoder_norm")


def weight_key(block: str, repeat: int, index: int, name: str) -> str:
    """Per-layer name of a weight or cache: ``layer.3.wq``; the embedding, head and other
    non-layer blocks' own names stay plain (``embed_table``, ``lm_head``)."""
    return name if block in SHARED_BLOCKS else f"{block}.{index}.{name}"


def init_weights(trace: Trace, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights for every weight operand of ``trace`` (matmul weights scaled by 1/sqrt(fan-in),
    norm gains near one), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for b in trace.blocks:
        for i in range(b.repeat):
            for op in b.ops:
                for t in op.inputs:
                    if t.role != "weight":
                        continue
                    key = weight_key(b.name, b.repeat, i, t.name)
                    if key in out:
                        continue
                    shape = weight_shape(op, t)
                    if op.kind == "matmul":
                        fan_in = math.prod(op.sizes[d] for d in op.reduce_dims)
                        out[key] = rng.standard_normal(shape) / math.sqrt(fan_in)
                    elif op.kind == "norm" and t.name.endswith(".weight"):
                        out[key] = 1.0 + 0.1 * rng.standard_normal(shape)
                    else:
                        out[key] = 0.1 * rng.standard_normal(shape) if op.kind == "norm" else rng.standard_normal(shape)
    return out


def t5_bucket(rel: np.ndarray, bidirectional: bool, buckets: int, max_distance: int) -> np.ndarray:
    """T5's relative position bucket of key-minus-query offsets ``rel`` (half the buckets exact,
    the rest logarithmic up to ``max_distance``; bidirectional splits them by sign)."""
    ret = np.zeros_like(rel)
    if bidirectional:
        buckets //= 2
        ret += (rel > 0) * buckets
        n = np.abs(rel)
    else:
        n = -np.minimum(rel, 0)
    exact = buckets // 2
    large = exact + (np.log(np.maximum(n, 1) / exact) / np.log(max_distance / exact) * (buckets - exact)).astype(int)
    return ret + np.where(n < exact, n, np.minimum(large, buckets - 1))


def tree_ancestors(parents: tuple[int, ...]) -> np.ndarray:
    """(n, n) boolean: node i's ancestors and itself, for nodes 0..n-1 with ``parents`` of 1..n-1."""
    n = len(parents) + 1
    anc = np.eye(n, dtype=bool)
    for i, p in enumerate(parents, start=1):
        anc[i] |= anc[p]
    return anc


def rope_tables(q_len: int, e: int, theta: float, offset: int, tree: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of shape (q_len, e) for positions offset..offset+q_len-1, or offset + depth of
    each node of a token tree (rotate-half layout)."""
    inv = theta ** (-np.arange(0, e, 2) / e)
    pos = offset + (tree_ancestors(tree).sum(axis=1) - 1 if tree else np.arange(q_len))
    ang = np.outer(pos, inv)
    ang = np.concatenate([ang, ang], axis=1)
    return np.cos(ang), np.sin(ang)


def _rotate_half(x: np.ndarray) -> np.ndarray:
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _cached_view(arr: np.ndarray, op: Op, t: Tensor) -> np.ndarray:
    """The part of a (b, tokens, ..., features) cache an op reads: the attention sinks plus the most
    recent tokens when it attends to fewer than are cached, the first ``e`` features when it
    reads a prefix of each row (MLA reads the latent without its RoPE part as values)."""
    s, sinks = op.sizes.get("s", arr.shape[1]), op.attrs.get("sinks", 0)
    if arr.shape[1] > s:
        arr = np.concatenate([arr[:, :sinks], arr[:, arr.shape[1] - (s - sinks):]], axis=1)
    e, off = op.sizes.get(t.dims[-1], arr.shape[-1]), op.attrs.get("kv_offset", 0)
    return arr[..., off:off + e] if arr.shape[-1] > e else arr


_ACTS = {"silu": _silu, "gelu": _gelu, "relu": lambda v: np.maximum(v, 0.0), "relu2": lambda v: np.maximum(v, 0.0) ** 2}


def _view(arr: np.ndarray, op: Op, t: Tensor) -> np.ndarray:
    shape = tuple(op.sizes[d] for d in t.dims)
    if arr.size != math.prod(shape):
        raise SpecError(f"op {op.name!r}: tensor {t.name!r} has {arr.size} elements, the op views it as {shape}")
    return arr.reshape(shape)


def run_op(op: Op, args: list[np.ndarray]) -> np.ndarray:
    """Execute one op on its operands (already in the op's views) and return its output."""
    k = op.kind
    if k == "matmul":
        letter = {d: _LETTERS[i] for i, d in enumerate(op.dim_names)}
        subs = ",".join("".join(letter[d] for d in t.dims) for t in op.inputs)
        out = "".join(letter[d] for d in op.output.dims)
        return np.einsum(f"{subs}->{out}", *args, optimize=True)
    if k == "norm":
        x = args[0]
        eps = op.attrs.get("eps", 1e-5)
        if op.attrs.get("type", "rmsnorm") == "rmsnorm":
            return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * args[1]
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * args[1] + args[2]
    if k == "softmax":
        s = args[0] * op.attrs.get("scale", 1.0)
        if len(args) > 1:  # additive score bias (relative positions)
            s = s + args[1]
        if op.attrs.get("causal"):
            q, kv = s.shape[-2], s.shape[-1]
            qpos = op.attrs.get("offset", kv - q) + np.arange(q)
            kpos = op.attrs.get("kv_start", 0) + np.arange(kv)
            keep = kpos[None, :] <= qpos[:, None]
            if op.attrs.get("tree"):  # token tree: a node sees the cache, its ancestors and itself, and sits at
                anc = tree_ancestors(op.attrs["tree"])  # position offset + depth (the tree's nodes are the last q keys)
                depth = op.attrs["offset"] + anc.sum(axis=1) - 1
                qpos, kpos = depth, np.concatenate([kpos[: kv - q], depth])
                keep = np.concatenate([np.ones((q, kv - q), dtype=bool), anc], axis=1)
            if op.attrs.get("window"):  # sliding window: the last `window` positions up to the query
                recent = kpos[None, :] > qpos[:, None] - op.attrs["window"]
                keep &= recent | (kpos[None, :] < op.attrs.get("sinks", 0))  # plus the attention sinks
            s = np.where(keep, s, -np.inf)
        s = s - s.max(axis=-1, keepdims=True)
        p = np.exp(s)
        return p / p.sum(axis=-1, keepdims=True)
    if k == "attn_merge":  # two partial attentions over disjoint keys, weighted by their log-sum-exp
        o1, o2, l1, l2 = args
        m = np.maximum(l1, l2)
        w1, w2 = (np.moveaxis(np.exp(v - m), 3, 1)[..., None] for v in (l1, l2))  # (b, h, r, q) -> (b, q, h, r, 1)
        return (w1 * o1 + w2 * o2) / (w1 + w2)
    if k == "activation":
        fn = _ACTS[op.attrs.get("function", "silu")]
        return fn(args[0]) * args[1] if op.attrs.get("gated") else fn(args[0])
    if k == "concat":  # along the last dim, each part broadcast over the lead dims it lacks
        lead = op.output.dims[:-1]
        parts = []
        for t, a in zip(op.inputs, args, strict=True):
            shape = [op.sizes[d] if d in t.dims else 1 for d in lead] + [a.shape[-1]]
            parts.append(np.broadcast_to(a.reshape(shape), [op.sizes[d] for d in lead] + [a.shape[-1]]))
        return np.concatenate(parts, axis=-1)
    if k == "elementwise":
        f = op.attrs.get("function", "add")
        if f == "scale":
            return args[0] * op.attrs["factor"]
        return args[0] + args[1] if f == "add" else args[0] * args[1]
    raise SpecError(f"op {op.name!r}: kind {k!r} needs the trace executor's state")


def execute(trace: Trace, weights: dict[str, np.ndarray], token_ids: np.ndarray,
            kv_cache: dict[str, np.ndarray] | None = None,
            emulate_formats: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run ``trace`` on ``token_ids`` (batch, new tokens); return the final op's output (logits)
    and the updated KV cache.

    ``emulate_formats``: store every weight matrix, activation and KV-cache entry in its tensor's
    number format (round-trip through :func:`~xpusim.workloads.functional.formats.quantize`,
    weights grouped along their input dimension); arithmetic stays float64, as accumulators are
    wider than the stored formats. Only matrix weights (linear layers, experts, embeddings) take the
    weight format; norm gains, biases, conv taps and SSM parameters stay unquantised, as in the
    quantisation schemes the formats come from."""
    cache = dict(kv_cache or {})
    env: dict[str, np.ndarray] = {"token_ids": np.asarray(token_ids).reshape(-1)}
    if emulate_formats:
        dtypes = {weight_key(b.name, b.repeat, i, t.name): t.dtype for b in trace.blocks for i in range(b.repeat)
                  for op in b.ops if op.kind in ("matmul", "embedding") for t in op.inputs if t.role == "weight"}
        weights = {k: quantize(v, dtypes[k]) if k in dtypes and v.ndim > 1 else v for k, v in weights.items()}
    last: Any = None
    for b in trace.blocks:
        for i in range(b.repeat):
            for op in b.ops:
                key = lambda n, b=b, i=i: weight_key(b.name, b.repeat, i, n)  # noqa: E731
                last = _execute_op(op, env, weights, cache, key)
                if emulate_formats and op.output.name in env and op.kind not in ("route",):
                    stored = quantize(env[op.output.name], op.output.dtype)
                    env[op.output.name] = last = stored
                    if op.output.role == "kv":
                        cache[key(op.output.name)] = stored
    return last, cache


def _execute_moe(op: Op, env: dict, weights: dict, key) -> np.ndarray:
    """Routing (``route``), token dispatch (``gather``) and the routed experts with their weighted
    sum (``combine``): each expert runs on the tokens actually routed to it."""
    a = op.attrs
    if op.kind == "route":
        routed = moe.route(_view(env[op.inputs[0].name], op, op.inputs[0]), a["top_k"], a["scoring"],
                           a["norm_topk_prob"], a["capacity_factor"], a.get("routed_scaling", 1.0))
        env["route_topk"] = routed
        out = routed.dense(op.sizes["x"])
    elif op.kind == "gather":
        out = env[op.inputs[0].name].reshape(op.sizes["m"], op.sizes["d"])
        env["dispatch_rows"] = out
    else:
        w = {n.rsplit(".", 1)[1]: weights[key(n)] for n in a["weights"]}  # w_gate, w_up, ... of every expert
        out = moe.experts_grouped(env["dispatch_rows"], env["route_topk"], w, _ACTS[a["function"]], a["gated"])
    env[op.output.name] = out
    return out


def _state(op: Op, cache: dict, key) -> np.ndarray | None:
    """The recurrent state an SSM op continues from (None at the start of a sequence)."""
    if not op.attrs.get("offset"):
        return None
    name = key(op.attrs["state"])
    if name not in cache:
        raise SpecError(f"op {op.name!r}: no recurrent state {name!r} in the cache; run the earlier steps first")
    return cache[name]


def _execute_ssm(op: Op, env: dict, weights: dict, cache: dict, key) -> np.ndarray:
    """Causal conv1d and selective scan, reading and writing their recurrent state in ``cache``."""
    w = lambda i: weights[key(op.inputs[i].name)]  # noqa: E731  (weights by operand position)
    if op.kind == "conv1d":
        x = _view(env[op.inputs[0].name], op, op.inputs[0])
        out, new_state = ssm.conv1d_causal(x, w(1), w(2), _state(op, cache, key))
        cache[key(op.attrs["state"])] = new_state
        env[op.output.name] = out
        return out
    sz = op.sizes
    x, dt_raw, bm, cm = (_view(env[t.name], op, t) for t in op.inputs[:4])
    b, q = sz["b"], sz["q"]
    h0 = _state(op, cache, key)
    if op.attrs["ssm"] == "mamba1":
        dt = ssm.softplus(dt_raw + w(6))
        A = -np.exp(w(4))
        y, h = ssm.scan_chunked(x, dt, A, bm[:, :, None, :], cm[:, :, None, :], h0, op.attrs["chunk"])
        y = y + w(5) * x
    else:  # Mamba-2: one A and dt per head, B and C per group, flattened to channels (head, p)
        nh, p, g, n = sz["h"], sz["p"], sz["g"], sz["n"]
        per_head = lambda v: np.repeat(v, p, axis=-1)  # noqa: E731  (..., h) -> (..., h*p)
        dt = per_head(ssm.softplus(dt_raw + w(6)))
        A = np.broadcast_to(per_head(-np.exp(w(4)))[:, None], (nh * p, n))
        grp = np.repeat(np.arange(nh) // (nh // g), p)
        y, h = ssm.scan_chunked(x.reshape(b, q, nh * p), dt, A, bm[:, :, grp, :], cm[:, :, grp, :],
                                None if h0 is None else h0.reshape(b, nh * p, n), op.attrs["chunk"])
        y = (y + per_head(w(5)) * x.reshape(b, q, nh * p)).reshape(b, q, nh, p)
        h = h.reshape(b, nh, p, n)
    cache[key(op.attrs["state"])] = h
    env[op.output.name] = y
    return y


def _execute_op(op: Op, env: dict, weights: dict, cache: dict, key) -> np.ndarray | None:
    k = op.kind
    if k == "rel_bias":
        a, sz = op.attrs, op.sizes
        rel = np.arange(sz["s"])[None, :] - (a["offset"] + np.arange(sz["q"]))[:, None]  # key minus query position
        table = weights[key(op.inputs[0].name)]  # (buckets, heads)
        out = table[t5_bucket(rel, a["bidirectional"], sz["u"], a["max_distance"])].transpose(2, 0, 1)[:, None]
        env[op.output.name] = out
        return out
    if k == "embedding":
        ids = env["token_ids"]
        if "start_token" in op.attrs:  # an encoder-decoder's first decoder step
            ids = np.full(op.sizes["m"], op.attrs["start_token"])
        x = weights[key("embed_table")][ids]
        if any(t.name == "pos_table" for t in op.inputs):
            q = op.attrs["seq"]
            pos = np.tile(np.arange(q) + op.attrs.get("offset", 0), ids.size // q)
            table = weights[key("pos_table")]
            if pos.max(initial=0) >= table.shape[0]:  # the cost model runs past it (architecture studies); numbers cannot
                raise ShapeError(f"position {int(pos.max())} is past the learned position table of {table.shape[0]} rows "
                                 "(the model's max_seq_len); execute a context of at most that")
            x = x + table[pos]
        env[op.output.name] = x
        return x
    if k == "kv_append":
        new = _view(env[op.inputs[0].name], op, op.inputs[0])
        name = key(op.output.name)
        off = op.attrs.get("offset", 0)
        old = cache.get(name)
        if off and (old is None or old.shape[1] < off):
            raise SpecError(f"op {op.name!r}: the KV cache holds {0 if old is None else old.shape[1]} tokens, "
                            f"the step expects {off}; run the earlier steps first")
        full = new if old is None or off == 0 else np.concatenate([old[:, :off], new], axis=1)
        cache[name] = full
        env[op.output.name] = full
        return full
    if k == "take_last":
        x = env[op.inputs[0].name]
        b, d = op.sizes["b"], op.sizes["d"]
        out = x.reshape(b, -1, d)[:, -1, :]
        env[op.output.name] = out
        return out
    if k == "rope":
        x = _view(env[op.inputs[0].name], op, op.inputs[0])
        e = op.sizes["e"]
        cos, sin = rope_tables(op.sizes["q"], e, op.attrs.get("theta", 10000.0), op.attrs.get("offset", 0),
                               op.attrs.get("tree", ()))
        shape = [1] * x.ndim
        qi, ei = op.inputs[0].dims.index("q"), op.inputs[0].dims.index("e")
        shape[qi], shape[ei] = cos.shape
        # tables are (q, e); broadcast them along the op's other dims
        perm_cos = cos if qi < ei else cos.T
        out = x * perm_cos.reshape(shape) + _rotate_half(x) * (sin if qi < ei else sin.T).reshape(shape)
        env[op.output.name] = out
        return out
    if "moe_group" in op.attrs:  # expert GEMMs sized by a routing distribution: run at `combine`
        return None
    if k in ("route", "gather", "combine"):
        return _execute_moe(op, env, weights, key)
    if k in ("conv1d", "scan"):
        return _execute_ssm(op, env, weights, cache, key)
    if k == "fftconv":  # a Hyena long convolution, continuing its input history
        z = _view(env[op.inputs[0].name], op, op.inputs[0])
        filt, bias = weights[key(op.inputs[1].name)], weights[key(op.inputs[2].name)]
        y, hist = ssm.long_conv_causal(z, filt, _state(op, cache, key), op.attrs.get("method", "fft"))
        cache[key(op.attrs["state"])] = hist
        out = y + bias * z
        env[op.output.name] = out
        return out
    args = []
    for t in op.inputs:
        if t.role == "weight":  # a weight may be viewed per head (MLA's absorbed up-projections)
            args.append(_view(weights[key(t.name)], op, t))
        elif t.role == "kv":
            stored = cache[key(t.name)] if key(t.name) in cache else env[t.name]  # this layer's cache
            args.append(_view(_cached_view(stored, op, t), op, t))
        else:
            args.append(_view(env[t.name], op, t))
    out = run_op(op, args)
    if k == "softmax" and op.attrs.get("lse"):  # partial attention: also its log-sum-exp per row
        sc = args[0] * op.attrs.get("scale", 1.0)
        mx = sc.max(axis=-1)
        env[f"{op.output.name}_lse"] = mx + np.log(np.exp(sc - mx[..., None]).sum(axis=-1))
    env[op.output.name] = out
    return out
