"""Model hyper-parameters (:class:`ModelSpec`) and their loading from xpusim YAML or a Hugging Face
``config.json``; shipped presets live in ``workloads/models/``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..dtypes import get_dtype
from ..errors import DtypeError, PresetNotFound, ShapeError, SpecError
from ..files import load_yaml, read_text

MODELS_DIR = Path(__file__).parent / "models"

ACTIVATIONS = ("silu", "gelu", "relu", "relu2")
ROUTER_SCORING = ("softmax", "sigmoid")
SSM_KINDS = ("mamba1", "mamba2", "hyena")
NORMS = ("rmsnorm", "layernorm")
POSITIONS = ("rope", "learned", "relative", "none")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's architecture and per-tensor-class number formats.

    Sizes are element counts; ``head_dim`` is per head. ``n_kv_heads < n_heads`` is GQA
    (``n_kv_heads == 1`` is MQA).
    """

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab_size: int
    max_seq_len: int = 4096
    activation: str = "silu"
    gated_mlp: bool = True
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    position: str = "rope"
    rope_theta: float = 10000.0
    tied_embeddings: bool = False
    weight_dtype: str = "bf16"
    act_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    embed_dtype: str = ""  # embeddings and LM head ("": the weight format)
    family: str = "llama"
    sub_norms: bool = False  # RMS norms before the output and down projections (BitNet)
    # mixture of experts (n_experts = 0: every layer dense)
    n_experts: int = 0
    experts_per_token: int = 0
    d_ff_expert: int = 0
    n_shared_experts: int = 0
    d_ff_shared: int = 0  # a shared expert's width on one device (0: the routed experts'); tensor parallelism under EP splits it
    first_dense_layers: int = 0
    router_scoring: str = "softmax"
    norm_topk_prob: bool = True
    capacity_factor: float = 0.0
    routed_scaling: float = 1.0
    # attention window (0: full causal attention) and attention sinks kept beside it
    sliding_window: int = 0
    attention_sinks: int = 0
    # multi-head latent attention (kv_lora_rank = 0: standard attention)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # state-space layers (ssm_kind "": none; "mamba1" selective scan; "mamba2" SSD; "hyena" long convolutions)
    ssm_kind: str = ""
    hyena_order: int = 2
    ssm_state: int = 16
    ssm_expand: int = 2
    ssm_conv: int = 4
    ssm_dt_rank: int = 0
    ssm_head_dim: int = 64
    ssm_groups: int = 1
    ssm_inner_norms: bool = False
    # hybrid interleaving: with an SSM, layer i is attention when i % attn_period == attn_offset;
    # with experts, layer i >= first_dense_layers is MoE when i % moe_period == moe_offset
    attn_period: int = 0
    attn_offset: int = 0
    moe_period: int = 0
    moe_offset: int = 0
    # encoder-decoder (encoder_layers = 0: decoder only); T5 relative position buckets
    encoder_layers: int = 0
    rel_buckets: int = 32
    rel_max_distance: int = 128
    decoder_start_token: int = 0

    def __post_init__(self) -> None:
        for f in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "vocab_size", "max_seq_len"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ShapeError(f"model {self.name!r}: {f} must be a positive integer, got {v!r}")
        ff = self.d_ff
        if not isinstance(ff, int) or isinstance(ff, bool) or ff < 0 or (ff == 0 and not self.ssm_kind):
            raise ShapeError(f"model {self.name!r}: d_ff must be a positive integer (0 only for MLP-free SSM layers), "
                             f"got {self.d_ff!r}")
        if self.n_heads % self.n_kv_heads:
            raise SpecError(
                f"model {self.name!r}: n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        for f, allowed in (("activation", ACTIVATIONS), ("norm", NORMS), ("position", POSITIONS)):
            if getattr(self, f) not in allowed:
                raise SpecError(f"model {self.name!r}: {f} {getattr(self, f)!r} is not one of {', '.join(allowed)}")
        for f in ("weight_dtype", "act_dtype", "kv_dtype", *(("embed_dtype",) if self.embed_dtype else ())):
            if get_dtype(getattr(self, f)).sparse_m and f != "weight_dtype":
                raise DtypeError(f"model {self.name!r}: {f} {getattr(self, f)!r}: N:M sparsity applies to the layers' "
                                 f"weights only; give it with the weight format (e.g. --weight-dtype int8-2:4)")
            if get_dtype(getattr(self, f)).name == "ternary" and f != "weight_dtype":
                what = {"act_dtype": "activations", "kv_dtype": "KV cache", "embed_dtype": "embeddings"}[f]
                raise DtypeError(f"model {self.name!r}: {f} ternary: ternary (BitNet b1.58) is a weight format; give the "
                                 f"{what} an int8 or 16-bit format")
        for f in ("norm_eps", "rope_theta"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise SpecError(f"model {self.name!r}: {f} must be a positive number, got {v!r}")
        for f in ("gated_mlp", "tied_embeddings", "norm_topk_prob", "sub_norms"):
            if not isinstance(getattr(self, f), bool):
                raise SpecError(f"model {self.name!r}: {f} must be true or false, got {getattr(self, f)!r}")
        if not isinstance(self.name, str) or not isinstance(self.family, str):
            raise SpecError("model name and family must be strings")
        self._check_moe()
        self._check_ssm()

    def _check_ssm(self) -> None:
        ints = ("ssm_state", "ssm_expand", "ssm_conv", "ssm_dt_rank", "ssm_head_dim", "ssm_groups", "attn_period",
                "attn_offset", "moe_period", "moe_offset", "encoder_layers", "hyena_order", "rel_buckets", "rel_max_distance",
                "decoder_start_token")
        for f in ints:
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ShapeError(f"model {self.name!r}: {f} must be a non-negative integer, got {v!r}")
        if self.ssm_kind not in ("", *SSM_KINDS):
            raise SpecError(f"model {self.name!r}: ssm_kind {self.ssm_kind!r} is not one of {', '.join(SSM_KINDS)} (or empty)")
        if not isinstance(self.ssm_inner_norms, bool):
            raise SpecError(f"model {self.name!r}: ssm_inner_norms must be true or false")
        if self.ssm_kind:
            for f in ("ssm_state", "ssm_expand", "ssm_conv", "ssm_head_dim", "ssm_groups"):
                if getattr(self, f) <= 0:
                    raise ShapeError(f"model {self.name!r}: {f} must be positive for an SSM model")
            if self.ssm_kind == "hyena" and self.hyena_order < 1:
                raise ShapeError(f"model {self.name!r}: hyena_order must be at least 1 (the number of long convolutions)")
            if self.ssm_kind == "mamba2" and (self.ssm_inner % self.ssm_head_dim or self.ssm_heads % self.ssm_groups):
                raise SpecError(f"model {self.name!r}: ssm_expand * d_model ({self.ssm_inner}) must be a multiple of "
                                f"ssm_head_dim ({self.ssm_head_dim}) and the heads a multiple of ssm_groups")
        if self.encoder_layers and (self.ssm_kind or self.is_moe or self.is_mla or self.position != "relative"):
            raise SpecError(f"model {self.name!r}: encoder-decoder models are modelled as T5 (dense layers, "
                            "relative position bias); set position: relative and no SSM/MoE/MLA fields")
        for per, off in (("attn_period", "attn_offset"), ("moe_period", "moe_offset")):
            if getattr(self, per) and getattr(self, off) >= getattr(self, per):
                raise SpecError(f"model {self.name!r}: {off} must be below {per}")
        if self.attn_period and not self.ssm_kind:
            raise SpecError(f"model {self.name!r}: attn_period interleaves attention among SSM layers; it needs ssm_kind")
        if self.moe_period and not self.n_experts:
            raise SpecError(f"model {self.name!r}: moe_period places MoE layers; it needs n_experts > 0")
        if self.sliding_window and self.ssm_kind and not self.attn_period:
            raise SpecError(f"model {self.name!r}: sliding_window applies to attention layers, and this SSM model has "
                            "none (set attn_period for a hybrid)")
        if self.encoder_layers and self.rel_buckets < 1:
            raise ShapeError(f"model {self.name!r}: rel_buckets must be at least 1 for the relative position bias")

    def _check_moe(self) -> None:
        ints = ("n_experts", "experts_per_token", "d_ff_expert", "n_shared_experts", "d_ff_shared", "first_dense_layers",
                "sliding_window",
                "attention_sinks", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        for f in ints:
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ShapeError(f"model {self.name!r}: {f} must be a non-negative integer, got {v!r}")
        if self.router_scoring not in ROUTER_SCORING:
            raise SpecError(f"model {self.name!r}: router_scoring {self.router_scoring!r} is not one of "
                            f"{', '.join(ROUTER_SCORING)}")
        cf = self.capacity_factor
        if isinstance(cf, bool) or not isinstance(cf, int | float) or not math.isfinite(cf) or cf < 0:
            raise SpecError(f"model {self.name!r}: capacity_factor must be >= 0 (0: no token dropping), got {cf!r}")
        if self.n_experts:
            if not 0 < self.experts_per_token <= self.n_experts:
                raise SpecError(f"model {self.name!r}: experts_per_token must be in 1..n_experts ({self.n_experts}), "
                                f"got {self.experts_per_token}")
            if self.first_dense_layers > self.n_layers:
                raise SpecError(f"model {self.name!r}: first_dense_layers ({self.first_dense_layers}) exceeds n_layers")
        elif self.experts_per_token or self.n_shared_experts:
            raise SpecError(f"model {self.name!r}: experts_per_token/n_shared_experts need n_experts > 0")
        rs = self.routed_scaling
        if isinstance(rs, bool) or not isinstance(rs, int | float) or not math.isfinite(rs) or rs <= 0:
            raise SpecError(f"model {self.name!r}: routed_scaling must be a positive number, got {rs!r}")
        if self.attention_sinks and not self.sliding_window:
            raise SpecError(f"model {self.name!r}: attention_sinks need a sliding_window (sinks + recent window)")
        if self.kv_lora_rank and not (self.qk_rope_head_dim and self.v_head_dim and self.qk_nope_head_dim):
            raise SpecError(f"model {self.name!r}: multi-head latent attention (kv_lora_rank > 0) needs "
                            "qk_nope_head_dim, qk_rope_head_dim and v_head_dim > 0")
        if self.sub_norms and (self.kv_lora_rank or self.n_experts):
            raise SpecError(f"model {self.name!r}: sub_norms (BitNet's norms before the output and down projections) are "
                            "modelled for dense attention layers; drop them or the MLA/MoE fields")
        if self.kv_lora_rank and self.sliding_window:
            raise SpecError(f"model {self.name!r}: a sliding window over multi-head latent attention is not modelled "
                            "(no published model uses one); drop sliding_window or kv_lora_rank")
        if self.n_experts and self.expert_ff <= 0:
            raise ShapeError(f"model {self.name!r}: experts need a width: give d_ff_expert (or d_ff) > 0")

    @property
    def is_mla(self) -> bool:
        """Multi-head latent attention (DeepSeek-V2/V3)."""
        return self.kv_lora_rank > 0

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def expert_ff(self) -> int:
        """Intermediate size of one routed expert (and, unless ``d_ff_shared``, of one shared expert)."""
        return self.d_ff_expert or self.d_ff

    @property
    def shared_ff(self) -> int:
        """Intermediate size of one shared expert."""
        return self.d_ff_shared or self.expert_ff

    def layer_kinds(self) -> list[tuple[str, str]]:
        """(mixer, feed-forward) of every layer: mixer ``attn`` or ``ssm``; feed-forward ``mlp``,
        ``moe`` or ``none``."""
        out = []
        for i in range(self.n_layers):
            attn = not self.ssm_kind or bool(self.attn_period and i % self.attn_period == self.attn_offset)
            moe = self.is_moe and i >= self.first_dense_layers and (not self.moe_period or i % self.moe_period == self.moe_offset)
            out.append(("attn" if attn else "ssm", "moe" if moe else ("mlp" if self.d_ff else "none")))
        return out

    @property
    def moe_layers(self) -> int:
        return sum(f == "moe" for _, f in self.layer_kinds())

    @property
    def attention_layers(self) -> int:
        return sum(mx == "attn" for mx, _ in self.layer_kinds())

    @property
    def ssm_layers(self) -> int:
        return self.n_layers - self.attention_layers

    # ------------------------------------------------------------------ state-space sizes
    @property
    def ssm_inner(self) -> int:
        """Channels of an SSM layer (``expand x d_model``)."""
        return self.ssm_expand * self.d_model

    @property
    def ssm_heads(self) -> int:
        """Mamba-2 heads (channels / head dim)."""
        return self.ssm_inner // self.ssm_head_dim

    @property
    def dt_rank(self) -> int:
        """Mamba-1 time-step rank (default ``ceil(d_model / 16)``)."""
        return self.ssm_dt_rank or -(-self.d_model // 16)

    @property
    def ssm_conv_channels(self) -> int:
        """Channels the causal conv1d runs over: x (Mamba-1), or x, B and C (Mamba-2)."""
        if self.ssm_kind == "hyena":  # the value and the N gates, each with its short filter
            return (self.hyena_order + 1) * self.ssm_inner
        return self.ssm_inner + (2 * self.ssm_groups * self.ssm_state if self.ssm_kind == "mamba2" else 0)

    @property
    def ssm_params(self) -> int:
        """Parameters of one SSM mixer (projections, conv with bias, A, D, dt bias, norms)."""
        d, di, n, k = self.d_model, self.ssm_inner, self.ssm_state, self.ssm_conv
        if self.ssm_kind == "hyena":  # in-projections, short filters with bias, the N long filters (held
            # materialised at max_seq_len, as inference runs them) with their bias D, out-projection
            order = self.hyena_order
            return (order + 1) * di * d + self.ssm_conv_channels * (k + 1) + order * di * (self.max_seq_len + 1) + di * d
        if self.ssm_kind == "mamba2":
            g, h = self.ssm_groups, self.ssm_heads
            return d * (2 * di + 2 * g * n + h) + self.ssm_conv_channels * (k + 1) + 3 * h + di + di * d
        r = self.dt_rank
        norms = (r + 2 * n) if self.ssm_inner_norms else 0
        return 2 * di * d + di * (k + 1) + di * (r + 2 * n) + r * di + di + di * n + di + di * d + norms

    @property
    def ssm_state_elements(self) -> int:
        """Recurrent state of one sequence in one SSM layer: conv window and scan state (a Hyena layer
        keeps its short-filter windows here; its long convolutions' history grows with the sequence
        and is counted per token with the KV cache, :attr:`kv_bytes_per_token`)."""
        if self.ssm_kind == "hyena":
            return (self.ssm_conv - 1) * self.ssm_conv_channels
        return (self.ssm_conv - 1) * self.ssm_conv_channels + self.ssm_inner * self.ssm_state

    # ------------------------------------------------------------------ derived sizes
    @property
    def q_per_kv(self) -> int:
        """Query heads per KV head (the GQA ``r`` dimension)."""
        return self.n_heads // self.n_kv_heads

    def kind_params(self, mixer: str, ffn: str) -> int:
        """Parameters of one layer of the given kind, with its norms."""
        norm = (1 if self.norm == "rmsnorm" else 2) * self.d_model
        mix = self.attention_params if mixer == "attn" else self.ssm_params
        mlp = (3 if self.gated_mlp else 2) * self.d_model
        ff = {"none": 0, "mlp": mlp * self.d_ff,
              "moe": self.n_experts * self.d_model + mlp * (self.n_experts * self.expert_ff
                                                            + self.n_shared_experts * self.shared_ff)}[ffn]
        sub = (self.n_heads * self.head_dim if mixer == "attn" else 0) + (self.d_ff if ffn == "mlp" else 0)
        return mix + ff + norm * (1 if ffn == "none" else 2) + (sub if self.sub_norms else 0)

    @property
    def layer_params(self) -> int:
        """Parameters of one dense decoder layer."""
        return self.kind_params("attn", "mlp")

    @property
    def moe_layer_params(self) -> int:
        """Parameters of one MoE decoder layer: router, every routed expert, shared experts."""
        return self.kind_params("attn", "moe")

    @property
    def attention_params(self) -> int:
        """Parameters of one layer's attention (projections, and MLA's low-rank norms)."""
        d, h = self.d_model, self.n_heads
        if not self.is_mla:
            return d * self.head_dim * (2 * h + 2 * self.n_kv_heads)
        qk = self.qk_nope_head_dim + self.qk_rope_head_dim
        dq, dc = self.q_lora_rank, self.kv_lora_rank
        q = d * dq + dq + dq * h * qk if dq else d * h * qk
        kv = d * (dc + self.qk_rope_head_dim) + dc + dc * h * (self.qk_nope_head_dim + self.v_head_dim)
        return q + kv + h * self.v_head_dim * d

    @property
    def params(self) -> int:
        """All parameters (embedding, layers, final norm, LM head unless tied)."""
        emb = self.vocab_size * self.d_model
        pos = self.max_seq_len * self.d_model if self.position == "learned" else 0
        head = 0 if self.tied_embeddings else self.vocab_size * self.d_model
        final_norm = (1 if self.norm == "rmsnorm" else 2) * self.d_model
        layers = sum(self.kind_params(mx, ff) for mx, ff in self.layer_kinds())
        if self.encoder_layers:  # encoder stack, cross-attention and norm per decoder layer, bias tables
            layers += (self.encoder_layers * self.kind_params("attn", "mlp")
                       + self.n_layers * (self.attention_params + self.d_model)
                       + final_norm + 2 * self.rel_buckets * self.n_heads)
        return emb + pos + layers + final_norm + head

    @property
    def embedding_params(self) -> int:
        """Token (and learned position) embeddings and an untied LM head."""
        pos = self.max_seq_len * self.d_model if self.position == "learned" else 0
        return self.vocab_size * self.d_model * (1 if self.tied_embeddings else 2) + pos

    @property
    def input_embedding_params(self) -> int:
        """The tables the embedding gathers from: token (and learned position) embeddings, without an
        untied LM head (a tied model's token table is its LM head's weight as well)."""
        pos = self.max_seq_len * self.d_model if self.position == "learned" else 0
        return self.vocab_size * self.d_model + pos

    @property
    def weights_bytes(self) -> float:
        """Parameter bytes: embeddings and LM head in ``embed_dtype``, the rest in ``weight_dtype``."""
        emb = self.embedding_params
        return emb * get_dtype(self.embedding_dtype).bytes + (self.params - emb) * get_dtype(self.weight_dtype).bytes

    @property
    def param_dtype(self) -> str:
        """Parameters outside the weight contractions (norm gains, biases, conv taps, SSM A/D/dt,
        long filters): the weights' format without N:M sparsity."""
        return get_dtype(self.weight_dtype).dense

    @property
    def embedding_dtype(self) -> str:
        """The embeddings' and LM head's format: ``embed_dtype``, else the weights' without N:M sparsity."""
        return self.embed_dtype or get_dtype(self.weight_dtype).dense

    @property
    def kv_elements_per_token(self) -> int:
        """Cached elements one token adds per attention layer: K and V of every KV head, or MLA's
        compressed latent plus its decoupled RoPE key."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.n_kv_heads * self.head_dim

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes one token adds (every layer; a Hyena layer keeps each long convolution's
        input history, ``hyena_order x channels`` per token)."""
        hist = self.ssm_layers * self.hyena_order * self.ssm_inner if self.ssm_kind == "hyena" else 0
        return (self.attention_layers * self.kv_elements_per_token + hist) * get_dtype(self.kv_dtype).bytes

    def ssm_state_bytes(self, batch: int) -> float:
        """Recurrent-state bytes of ``batch`` sequences over every SSM layer (constant in length)."""
        return self.ssm_layers * batch * self.ssm_state_elements * get_dtype(self.kv_dtype).bytes

    def kv_tokens(self, kv_len: int) -> int:
        """Tokens a sequence of ``kv_len`` keeps cached: all, or the attention sinks plus the last
        ``sliding_window`` (a rolling buffer)."""
        if not self.sliding_window:
            return kv_len
        return min(kv_len, self.attention_sinks + self.sliding_window)

    def kv_cache_bytes(self, batch: int, kv_len: int, source: int = 0) -> float:
        """KV-cache bytes of ``batch`` sequences holding ``kv_len`` tokens each (an encoder-decoder
        model also caches the cross-attention K/V of its ``source`` tokens in every decoder layer)."""
        return self.kv_bytes_per_token * batch * (self.kv_tokens(kv_len) + (source if self.encoder_layers else 0))

    def with_formats(self, weights: str | None = None, activations: str | None = None, kv: str | None = None) -> ModelSpec:
        d = asdict(self)
        d.update({k: get_dtype(v).name for k, v in (("weight_dtype", weights), ("act_dtype", activations), ("kv_dtype", kv))
                  if v})
        return ModelSpec(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FIELDS = {f.name for f in fields(ModelSpec)}


def model_from_dict(d: dict[str, Any], name: str = "model") -> ModelSpec:
    """Build a :class:`ModelSpec` from xpusim's own YAML/JSON keys (the dataclass fields)."""
    if not isinstance(d, dict):
        raise SpecError(f"model {name!r}: expected a mapping of fields, got {type(d).__name__}")
    unknown = sorted(set(d) - _FIELDS)
    if unknown:
        raise SpecError(f"model {name!r}: unknown field(s) {unknown}; known fields: {', '.join(sorted(_FIELDS))}")
    d = dict(d)
    d.setdefault("name", name)
    if "head_dim" not in d and isinstance(d.get("d_model"), int) and isinstance(d.get("n_heads"), int) and d["n_heads"] > 0:
        if d["d_model"] % d["n_heads"]:
            raise SpecError(f"model {name!r}: d_model {d['d_model']} is not a multiple of n_heads {d['n_heads']}; give "
                            "head_dim explicitly (or fix the sizes)")
        d["head_dim"] = d["d_model"] // d["n_heads"]
    d.setdefault("n_kv_heads", d.get("n_heads"))
    missing = [f for f in ("n_layers", "d_model", "n_heads", "d_ff", "vocab_size") if f not in d]
    if missing:
        raise SpecError(f"model {name!r}: missing required field(s) {missing}")
    try:
        return ModelSpec(**d)
    except TypeError as e:
        raise SpecError(f"model {name!r}: {e}") from None


# ---------------------------------------------------------------------------- loading
def list_models() -> list[str]:
    """Names of the shipped model presets."""
    return sorted(p.stem for p in MODELS_DIR.iterdir() if p.suffix in (".json", ".yaml"))


def _read_structured(path: Path) -> Any:
    text = read_text(path, "a model YAML or a Hugging Face config.json")
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return load_yaml(text, path)
    except json.JSONDecodeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpecError(f"{path}: malformed {'JSON' if path.suffix == '.json' else 'YAML'} ({first}); fix the syntax") from None


def load_model(ref: str | Path | ModelSpec) -> ModelSpec:
    """Load a model by preset name, xpusim YAML/JSON path, or Hugging Face ``config.json`` path."""
    if isinstance(ref, ModelSpec):
        return ref
    path = Path(ref)
    if not path.is_file():
        for ext in (".json", ".yaml"):
            cand = MODELS_DIR / f"{ref}{ext}"
            if cand.is_file():
                path = cand
                break
        else:
            if path.is_dir():
                cfg = path / "config.json"
                if not cfg.is_file():
                    raise SpecError(f"model {str(ref)!r} is a directory without a config.json; give the config.json "
                                    "or an xpusim model file")
                path = cfg
            elif path.suffix in (".json", ".yaml", ".yml") or "/" in str(ref):
                raise SpecError(f"model file {str(ref)!r} does not exist")
            else:
                raise PresetNotFound(f"unknown model {str(ref)!r}; presets: {', '.join(list_models())} "
                                     "(or give a file path)")
    data = _read_structured(path)
    name = path.stem if path.stem != "config" else path.resolve().parent.name
    if isinstance(data, dict) and "model_type" in data:
        from .hf_config import model_from_hf_config

        return model_from_hf_config(data, name)
    return model_from_dict(data, name)
