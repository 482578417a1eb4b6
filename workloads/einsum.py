"""The operator IR: every operator is an Einsum over named dimensions.

A tensor is a projection of the operator's iteration space onto a subset of its dimensions (in
the tensor's row-major layout order). A dimension a tensor does not index is reuse of that tensor.
A tensor flowing between operators may be *viewed* with other dimensions by the consumer, provided
the element count is the same (row-major reshape), so a linear layer stays a 2-D (m, n, k) GEMM
while attention keeps its (b, h, r, q, s, e) dimensions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..dtypes import get_dtype
from ..errors import DtypeError, ShapeError, SpecError

#: Operator kinds. ``matmul`` is a multiply-accumulate contraction over the dimensions its output
#: does not index; the others are streaming (vector) operators.
KINDS = (
    "matmul", "softmax", "norm", "elementwise", "activation", "rope", "embedding", "kv_append",
    "take_last", "route", "gather", "combine", "concat", "conv1d", "scan", "rel_bias", "attn_merge", "collective",
    "fftconv",
)

#: Tensor roles: what a tensor is, for memory accounting and placement.
ROLES = ("weight", "activation", "kv", "state", "input")


#: most index points an op may span: counts stay exact in float64 and int64 arithmetic
MAX_POINTS = 2**53


@dataclass(frozen=True)
class Tensor:
    """A tensor as the projection of an op's iteration space onto ``dims`` (layout order)."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    role: str = "activation"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise SpecError(f"tensor {self.name!r}: role {self.role!r} is not one of {', '.join(ROLES)}")
        if len(set(self.dims)) != len(self.dims):
            raise SpecError(f"tensor {self.name!r}: dimension repeated in {self.dims}")
        get_dtype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dims": list(self.dims), "dtype": self.dtype, "role": self.role}


@dataclass(frozen=True)
class Op:
    """One operator.

    ``dims``: ordered (name, size) pairs of the iteration space; ``flops_per_point``: floating-point
    operations per iteration point (2 for a multiply-accumulate). ``attrs`` holds kind-specific
    parameters (``causal``, ``scale``, ``eps``, ``function``...) that do not change the cost shape.
    """

    name: str
    kind: str
    dims: tuple[tuple[str, int], ...]
    inputs: tuple[Tensor, ...]
    output: Tensor
    flops_per_point: float = 2.0
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SpecError(f"op {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        names = [d for d, _ in self.dims]
        if len(set(names)) != len(names):
            raise SpecError(f"op {self.name!r}: dimension names repeat in {names}")
        for d, n in self.dims:
            if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                raise ShapeError(f"op {self.name!r}: dimension {d!r} has size {n!r}; sizes must be positive integers")
        if math.prod(n for _, n in self.dims) > MAX_POINTS:
            raise ShapeError(f"op {self.name!r}: {dict(self.dims)} spans more than 2^53 index points, beyond what "
                             "xpusim counts exactly; use smaller sizes")
        for t in (*self.inputs, self.output):
            missing = [d for d in t.dims if d not in names]
            if missing:
                raise SpecError(f"op {self.name!r}: tensor {t.name!r} indexes unknown dimensions {missing}")
        if self.flops_per_point < 0:
            raise SpecError(f"op {self.name!r}: flops_per_point must be >= 0")
        for t in (*self.inputs, self.output):
            if get_dtype(t.dtype).sparse_m and not (self.kind == "matmul" and t.role == "weight" and t in self.inputs):
                raise DtypeError(f"op {self.name!r}: tensor {t.name!r} is {t.dtype}: N:M sparsity applies to the weight "
                                 f"operand of a contraction only; use {get_dtype(t.dtype).dense}")

    # ----------------------------------------------------------------- shape
    @property
    def sizes(self) -> dict[str, int]:
        return dict(self.dims)

    @property
    def dim_names(self) -> tuple[str, ...]:
        return tuple(d for d, _ in self.dims)

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        """Inputs then output."""
        return (*self.inputs, self.output)

    @property
    def points(self) -> int:
        """Size of the iteration space."""
        return math.prod(n for _, n in self.dims)

    @property
    def reduce_dims(self) -> tuple[str, ...]:
        """Dimensions summed over (not indexed by the output) for a contraction."""
        return tuple(d for d in self.dim_names if d not in self.output.dims) if self.kind == "matmul" else ()

    def elements(self, t: Tensor) -> int:
        s = self.sizes
        return math.prod(s[d] for d in t.dims)

    def tensor_bytes(self, t: Tensor) -> float:
        return self.elements(t) * get_dtype(t.dtype).bytes

    # ----------------------------------------------------------------- metrics
    @property
    def flops(self) -> float:
        """Floating-point operations (2 per multiply-accumulate)."""
        return self.points * self.flops_per_point

    @property
    def useful_flops(self) -> float:
        """FLOPs of the work the result needs: a causal attention op (queries ``q`` appended after
        ``s - q`` earlier keys) needs query ``i`` against ``s - q + i + 1`` keys only, at most
        ``window`` of them (plus ``sinks``); every other op needs all of :attr:`flops`."""
        sizes = dict(self.dims)
        q, s = sizes.get("q", 0), sizes.get("s", 0)
        if not self.attrs.get("causal") or q <= 1 or s <= 0:
            return self.flops
        first = max(s - q + 1, 1)  # keys the first new query sees
        window = int(self.attrs.get("window", 0) or 0)
        cap = min(s, window + int(self.attrs.get("sinks", 0) or 0)) if window else s
        k = max(0, min(q, cap - first + 1))  # queries below the cap
        kept = k * first + k * (k - 1) / 2 + (q - k) * cap
        return self.flops * min(1.0, kept / (q * s))

    def kept_block_fraction(self, block_q: int, block_k: int = 1) -> float:
        """Share of a causal attention op's ``q x s`` (query, key) plane that a blocked kernel still
        computes when it skips the ``block_q x block_k`` blocks the mask (causal, sliding ``window``
        with ``sinks``) empties entirely: 1 for other ops and single-query steps. Each query block
        keeps the keys up to its last query's, rounded up to whole key blocks, and drops the key
        blocks wholly left of its first query's window (the sinks stay)."""
        import numpy as np

        sizes = dict(self.dims)
        q, s = sizes.get("q", 0), sizes.get("s", 0)
        if not self.attrs.get("causal") or q <= 1 or s <= 0:
            return 1.0
        offset = s - q  # keys before the first new query
        start = np.arange(0, q, block_q)
        last = np.minimum(start + block_q, q) + offset  # keys the block's last query sees
        hi = np.minimum(s, -(-last // block_k) * block_k)
        window = int(self.attrs.get("window", 0) or 0)
        sinks = int(self.attrs.get("sinks", 0) or 0)
        lo = np.maximum(0, offset + start - window + 1) // block_k * block_k if window else np.zeros_like(start)
        rows = np.minimum(start + block_q, q) - start  # the last query block may be partial
        kept = (hi - (lo - np.minimum(sinks, lo))) * rows
        return float(kept.sum() / (q * s))

    @property
    def macs(self) -> int:
        return self.points if self.kind == "matmul" else 0

    @property
    def bytes(self) -> float:
        """Compulsory bytes: every tensor read or written once."""
        return sum(self.tensor_bytes(t) for t in self.tensors)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOPs per compulsory byte."""
        return self.flops / self.bytes if self.bytes else 0.0

    @property
    def compute_dtype(self) -> str:
        """The format the arithmetic runs in: the widest-storage input's compute class."""
        return max(self.inputs, key=lambda t: get_dtype(t.dtype).bits).dtype if self.inputs else self.output.dtype

    def signature(self) -> tuple[Any, ...]:
        """Everything that determines the op's cost (not its name): the memoisation key."""
        return (
            self.kind,
            self.dims,
            tuple((t.dims, t.dtype) for t in self.inputs),
            (self.output.dims, self.output.dtype),
            self.flops_per_point,
            tuple(sorted((k, v) for k, v in self.attrs.items() if k in _COST_ATTRS)),
        )

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "dims": {d: n for d, n in self.dims},
            "inputs": [t.to_dict() for t in self.inputs],
            "output": self.output.to_dict(),
            "flops_per_point": self.flops_per_point,
            "attrs": dict(self.attrs),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Op:
        try:
            dims = d["dims"]
            if not isinstance(dims, dict):
                raise SpecError(f"op {d.get('name')!r}: 'dims' must be a mapping of name to size")
            return cls(
                name=str(d["name"]),
                kind=str(d["kind"]),
                dims=tuple((str(k), v) for k, v in dims.items()),
                inputs=tuple(_tensor(t) for t in d["inputs"]),
                output=_tensor(d["output"]),
                flops_per_point=float(d.get("flops_per_point", 2.0)),
                attrs=dict(d.get("attrs") or {}),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise SpecError(f"malformed op {d.get('name') if isinstance(d, dict) else d!r}: missing or bad field {e}") from None


#: attrs that change an op's cost (the rest only change its numerics)
_COST_ATTRS = ("causal", "window", "sinks", "moe_group", "shares_keys")


def gemm_op(m: int, n: int, k: int, dtype: str = "bf16", name: str = "gemm") -> Op:
    """C[m, n] = A[m, k] @ B[k, n] with B a weight: SCALE-Sim's GEMM row ``M, N, K`` (IFMAP M x K,
    filter K x N, OFMAP M x N)."""
    dense = get_dtype(dtype).dense  # an N:M sparse format applies to the weight B only
    return Op(name, "matmul", (("m", m), ("n", n), ("k", k)),
              (Tensor("A", ("m", "k"), dense), Tensor("B", ("k", "n"), dtype, "weight")), Tensor("C", ("m", "n"), dense))


def _tensor(d: Any) -> Tensor:
    if not isinstance(d, dict):
        raise SpecError(f"a tensor must be a mapping with name, dims, dtype; got {d!r}")
    return Tensor(str(d["name"]), tuple(str(x) for x in d["dims"]), str(d["dtype"]), str(d.get("role", "activation")))
