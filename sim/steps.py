"""Multi-step phases built from simulated steps: chunked prefill and speculative decoding.

**Chunked prefill** runs a prompt ``chunk`` tokens at a time (each chunk attends to the cached
earlier chunks); its result is the sum of the chunk steps.

**Speculative decoding** (Leviathan et al., "Fast Inference from Transformers via Speculative
Decoding", ICML 2023; Medusa, Cai et al., arXiv:2401.10774): a drafter proposes ``k`` tokens, the
target model verifies them in one forward pass (:class:`~xpusim.workloads.phases.Verify`) and keeps
the longest accepted prefix plus one token of its own. With a per-token acceptance rate ``a`` and
a chain of ``k`` drafts the expected tokens per step are ``(1 - a^(k+1)) / (1 - a)`` (Leviathan
eq. 1). A token tree with ``w`` candidates per level (each accepted independently with rate
``a``) accepts a level with ``1 - (1 - a)^w``, giving the same formula at that rate. The speedup
over plain decoding is ``E x t_decode / (t_draft + t_verify)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd

from ..arch.loader import load_arch
from ..arch.spec import Arch
from ..errors import SpecError
from ..workloads.einsum import Op, Tensor
from ..workloads.model import ModelSpec, load_model
from ..workloads.opkit import ACT_FLOPS, add, linear
from ..workloads.phases import Decode, Prefill, Verify, chunk_steps
from ..workloads.trace import Block, Trace
from .result import Result


def simulate_chunked_prefill(arch: Arch | str, model: ModelSpec | str, batch: int, seq: int, chunk: int,
                             **kw) -> Result:
    """A prefill of ``seq`` tokens in chunks of ``chunk``: the chunk steps summed, one row per op
    and chunk (column ``step``, in order); memory is that of the last chunk (the whole prompt
    cached). Its ``phase_args`` describe the whole prompt (``seq``, ``chunk``). The memory check is the
    whole prompt's: its KV cache with the largest chunk's activations, its remedies for the prompt."""
    from .engine import check_fits, simulate

    arch, model = load_arch(arch), load_model(model)
    check = kw.pop("check_memory", True)
    wafer = arch.device_class == "wafer"  # its check is the placement of every chunk (the last holds the prompt's KV)
    steps = [simulate(arch, model, ph, check_memory=check and wafer, **kw) for ph in chunk_steps(batch, seq, chunk)]
    ops = pd.concat([r.ops.assign(step=i) for i, r in enumerate(steps)], ignore_index=True)
    last = steps[-1]
    inputs = {**last.inputs, "phase": "prefill", "chunk": chunk, "steps": len(steps),
              "phase_args": {"batch": batch, "seq": seq, "prefix": 0, "chunk": chunk},
              "meta": {**last.inputs.get("meta", {}), "seq": seq, "prefix": 0, "chunk": chunk}}
    result = Result(ops=ops, latency_s=sum(r.latency_s for r in steps), energy_j=sum(r.energy_j for r in steps),
                    tokens=batch * seq, weights_bytes=last.weights_bytes, kv_cache_bytes=last.kv_cache_bytes,
                    activation_bytes=max(r.activation_bytes for r in steps), capacity_bytes=last.capacity_bytes,
                    inputs=inputs, mappings=last.mappings, ssm_state_bytes=last.ssm_state_bytes)
    if check and not wafer:
        check_fits(result, model, Prefill(batch, seq), arch, chunk=chunk)
    return result


def expected_tokens(acceptance: float, draft: int, width: int = 1) -> float:
    """Expected tokens per verification step (accepted drafts plus the target's own token)."""
    if not 0 <= acceptance <= 1:
        raise SpecError(f"acceptance rate must be in [0, 1], got {acceptance}")
    a = 1 - (1 - acceptance) ** width
    return draft + 1.0 if a == 1 else (1 - a ** (draft + 1)) / (1 - a)


def tree_parents(depth: int, width: int) -> tuple[int, ...]:
    """Parents of a full token tree: ``width`` children per node, ``depth`` levels below the root."""
    parents: list[int] = []
    level, nxt = [0], 1
    for _ in range(depth):
        new = []
        for p in level:
            for _ in range(width):
                parents.append(p)
                new.append(nxt)
                nxt += 1
        level = new
    return tuple(parents)


def medusa_trace(target: ModelSpec, batch: int, heads: int) -> Trace:
    """Medusa-1 heads on the last hidden state: per head a residual SiLU block and an LM head."""
    d, v, adt, wdt = target.d_model, target.vocab_size, target.act_dtype, target.weight_dtype
    ops: list[Op] = [
        linear("medusa_block", batch, d, d, "xf", "w_medusa", "mh", wdt, adt),
        Op("medusa_act", "activation", (("m", batch), ("f", d)), (Tensor("mh", ("m", "f"), adt),),
           Tensor("ma", ("m", "f"), adt), ACT_FLOPS[("silu", False)], {"function": "silu", "gated": False}),
        add("medusa_residual", batch, d, "xf", "ma", "mr", adt),
        linear("medusa_lm_head", batch, v, d, "mr", "w_medusa_lm", "medusa_logits", wdt, adt),
    ]
    return Trace(f"{target.name}-medusa", "verify", [Block("medusa_head", ops, heads)], tokens=batch)


@dataclass(frozen=True)
class Speculation:
    """Expected behaviour of one speculative step against plain decoding (seconds, tokens)."""

    draft_tokens: int
    tree_width: int
    tree_nodes: int
    acceptance: float
    expected_tokens: float
    decode_s: float
    draft_s: float
    verify_s: float
    step_s: float
    speedup: float
    drafter: str
    drafter_formats: str = ""  # weights/activations/KV of a draft model (its checkpoint's, on the device's engine)

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def speculate(arch: Arch | str, target: ModelSpec | str, batch: int, context: int, draft: int, acceptance: float,
              draft_model: ModelSpec | str | None = None, medusa_heads: int = 0, width: int = 1,
              **kw) -> Speculation:
    """Expected tokens per step, step time and speedup of speculative decoding after ``context``
    cached tokens, with a draft model (chain, ``width`` 1) or Medusa heads (a token tree of
    ``width`` candidates per level; ``medusa_heads`` = tree depth = ``draft``)."""
    from .engine import simulate, simulate_trace

    arch = load_arch(arch)
    target = load_model(target)
    if (draft_model is None) == (medusa_heads == 0):
        raise SpecError("speculative decoding needs exactly one drafter: a draft model (--draft-model) or Medusa heads "
                        "(--medusa-heads), not " + ("both" if draft_model is not None else "neither"))
    if medusa_heads and medusa_heads != draft:
        raise SpecError(f"Medusa drafts one token per head: --draft-tokens ({draft}) must equal --medusa-heads ({medusa_heads})")
    if draft_model is not None and width != 1:
        raise SpecError("a draft model proposes a chain; token trees (--tree-width > 1) are drafted by Medusa heads")
    parents = tree_parents(draft, width) if width > 1 else ()
    nodes = len(parents) if parents else draft
    check = kw.pop("check_memory", True)
    kw["check_memory"] = check and load_arch(arch).device_class == "wafer"  # a wafer: each step placed
    # elsewhere the target and its drafter share the device: checked together below
    decode_s = simulate(arch, target, Decode(batch, context), **kw).latency_s
    verify = simulate(arch, target, Verify(batch, context, nodes, parents), **kw)
    if draft_model is not None:
        from .engine import with_engine_formats

        dm = with_engine_formats(load_model(draft_model), arch)  # the drafter runs on the same engine
        if abs(dm.vocab_size - target.vocab_size) > 0.01 * target.vocab_size:  # beyond padding of one tokenizer
            raise SpecError(f"draft model {dm.name} has a {dm.vocab_size:,}-token vocabulary and {target.name} "
                            f"{target.vocab_size:,}: a drafter must propose the target's tokens (same tokenizer)")
        drafts = [simulate(arch, dm, Decode(batch, context + i), **kw) for i in range(1, draft + 1)]
        draft_s = sum(r.latency_s for r in drafts)
        drafter, formats = dm.name, "/".join((dm.weight_dtype, dm.act_dtype, dm.kv_dtype))
        # the drafter's weights, KV cache and state beside the target's; one model's activations at a time
        extra = drafts[-1].weights_bytes + drafts[-1].kv_cache_bytes + drafts[-1].ssm_state_bytes
        extra_act = drafts[-1].activation_bytes
    else:
        trace = medusa_trace(target, batch, medusa_heads)
        heads = simulate_trace(trace, arch, kw.get("objective", "latency"))
        draft_s = heads.latency_s
        drafter, formats = f"medusa x{medusa_heads}", ""
        extra = sum(op.tensor_bytes(t) * b.repeat for b, op in trace.ops() for t in op.inputs if t.role == "weight")
        extra_act = 0.0
    if check:
        _check_pair_fits(verify, extra, extra_act, target, drafter, arch)
    e = expected_tokens(acceptance, draft, width)
    step = draft_s + verify.latency_s
    return Speculation(draft, width, nodes, acceptance, e, decode_s, draft_s, verify.latency_s, step,
                       e * decode_s / step if step > 0 else math.inf, drafter, formats)


def _check_pair_fits(verify: Result, extra: float, extra_act: float, target: ModelSpec, drafter: str, arch: Arch) -> None:
    """Raise :class:`CapacityError` when the target's verify step (weights, KV cache at the drafts'
    length, state, activations) plus the drafter's ``extra`` resident bytes (weights, KV cache, state)
    and the larger of the two models' activations exceed the device."""
    from ..errors import CapacityError

    need = verify.memory_bytes + extra + max(extra_act - verify.activation_bytes, 0.0)
    if need <= verify.capacity_bytes:
        return
    gib = 2.0**30
    raise CapacityError(
        f"speculative decoding of {target.name} with {drafter} needs {need / gib:.1f} GiB (the target's "
        f"{verify.memory_bytes / gib:.1f} GiB in its verify step, the drafter's {extra / gib:.1f} GiB beside it) but "
        f"{arch.name} has {verify.capacity_bytes / gib:.1f} GiB; try a smaller --batch or --context, a smaller drafter, "
        "narrower formats (--weight-dtype, --kv-dtype) or a device with more memory")
