"""Model hyper-parameters (:class:`ModelSpec`) and their loading from xpusim YAML or a Hugging Face
``config.json``; shipped presets live in ``workloads/models/``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ..dtypes import get_dtype
from ..errors import PresetNotFound, ShapeError, SpecError

MODELS_DIR = Path(__file__).parent / "models"

ACTIVATIONS = ("silu", "gelu", "relu")
ROUTER_SCORING = ("softmax", "sigmoid")
NORMS = ("rmsnorm", "layernorm")
POSITIONS = ("rope", "learned", "none")


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
    family: str = "llama"
    # mixture of experts (n_experts = 0: every layer dense)
    n_experts: int = 0
    experts_per_token: int = 0
    d_ff_expert: int = 0
    n_shared_experts: int = 0
    first_dense_layers: int = 0
    router_scoring: str = "softmax"
    norm_topk_prob: bool = True
    capacity_factor: float = 0.0
    # attention window (0: full causal attention)
    sliding_window: int = 0

    def __post_init__(self) -> None:
        for f in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab_size", "max_seq_len"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ShapeError(f"model {self.name!r}: {f} must be a positive integer, got {v!r}")
        if self.n_heads % self.n_kv_heads:
            raise SpecError(
                f"model {self.name!r}: n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        for f, allowed in (("activation", ACTIVATIONS), ("norm", NORMS), ("position", POSITIONS)):
            if getattr(self, f) not in allowed:
                raise SpecError(f"model {self.name!r}: {f} {getattr(self, f)!r} is not one of {', '.join(allowed)}")
        for f in ("weight_dtype", "act_dtype", "kv_dtype"):
            get_dtype(getattr(self, f))
        for f in ("norm_eps", "rope_theta"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise SpecError(f"model {self.name!r}: {f} must be a positive number, got {v!r}")
        for f in ("gated_mlp", "tied_embeddings", "norm_topk_prob"):
            if not isinstance(getattr(self, f), bool):
                raise SpecError(f"model {self.name!r}: {f} must be true or false, got {getattr(self, f)!r}")
        if not isinstance(self.name, str) or not isinstance(self.family, str):
            raise SpecError("model name and family must be strings")
        self._check_moe()

    def _check_moe(self) -> None:
        ints = ("n_experts", "experts_per_token", "d_ff_expert", "n_shared_experts", "first_dense_layers", "sliding_window")
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

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def expert_ff(self) -> int:
        """Intermediate size of one routed (and one shared) expert."""
        return self.d_ff_expert or self.d_ff

    @property
    def moe_layers(self) -> int:
        return self.n_layers - self.first_dense_layers if self.is_moe else 0

    # ------------------------------------------------------------------ derived sizes
    @property
    def q_per_kv(self) -> int:
        """Query heads per KV head (the GQA ``r`` dimension)."""
        return self.n_heads // self.n_kv_heads

    @property
    def layer_params(self) -> int:
        """Parameters of one dense decoder layer."""
        return self._attn_norm_params() + (3 if self.gated_mlp else 2) * self.d_model * self.d_ff

    @property
    def moe_layer_params(self) -> int:
        """Parameters of one MoE decoder layer: router, every routed expert, shared experts."""
        per_expert = (3 if self.gated_mlp else 2) * self.d_model * self.expert_ff
        return (self._attn_norm_params() + self.n_experts * self.d_model
                + (self.n_experts + self.n_shared_experts) * per_expert)

    def _attn_norm_params(self) -> int:
        attn = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        norms = (2 if self.norm == "rmsnorm" else 4) * self.d_model
        return attn + norms

    @property
    def params(self) -> int:
        """All parameters (embedding, layers, final norm, LM head unless tied)."""
        emb = self.vocab_size * self.d_model
        pos = self.max_seq_len * self.d_model if self.position == "learned" else 0
        head = 0 if self.tied_embeddings else self.vocab_size * self.d_model
        final_norm = (1 if self.norm == "rmsnorm" else 2) * self.d_model
        layers = (self.n_layers - self.moe_layers) * self.layer_params + self.moe_layers * self.moe_layer_params
        return emb + pos + layers + final_norm + head

    @property
    def weights_bytes(self) -> float:
        return self.params * get_dtype(self.weight_dtype).bytes

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes one token adds (K and V, every layer)."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * get_dtype(self.kv_dtype).bytes

    def kv_cache_bytes(self, batch: int, kv_len: int) -> float:
        """KV-cache bytes of ``batch`` sequences holding ``kv_len`` tokens each; a sliding window
        keeps only the last ``sliding_window`` tokens (a rolling buffer)."""
        tokens = min(kv_len, self.sliding_window) if self.sliding_window else kv_len
        return self.kv_bytes_per_token * batch * tokens

    def with_formats(self, weights: str | None = None, activations: str | None = None, kv: str | None = None) -> ModelSpec:
        d = asdict(self)
        d.update({k: v for k, v in (("weight_dtype", weights), ("act_dtype", activations), ("kv_dtype", kv)) if v})
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
        d["head_dim"] = d["d_model"] // d["n_heads"]
    d.setdefault("n_kv_heads", d.get("n_heads"))
    missing = [f for f in ("n_layers", "d_model", "n_heads", "d_ff", "vocab_size") if f not in d]
    if missing:
        raise SpecError(f"model {name!r}: missing required field(s) {missing}")
    try:
        return ModelSpec(**d)
    except TypeError as e:
        raise SpecError(f"model {name!r}: {e}") from None


# ---------------------------------------------------------------------------- Hugging Face configs
_HF_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
HF_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gpt2")


def _num(v: Any, key: str, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SpecError(f"config.json of {name!r}: {key} must be a number, got {v!r}")
    return float(v)


def _get(cfg: dict[str, Any], key: str, name: str, default: Any = None) -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if default is None:
        raise SpecError(f"config.json of {name!r}: missing required key {key!r}")
    return default


def model_from_hf_config(cfg: dict[str, Any], name: str) -> ModelSpec:
    """Map a Hugging Face ``config.json`` onto a :class:`ModelSpec`."""
    mt = cfg.get("model_type")
    if "tie_word_embeddings" in cfg and not isinstance(cfg["tie_word_embeddings"], bool):
        raise SpecError(f"config.json of {name!r}: tie_word_embeddings must be true or false")
    dtype = _HF_DTYPES.get(str(cfg.get("torch_dtype", "bfloat16")), "bf16")
    if mt in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe"):
        hidden = _get(cfg, "hidden_size", name)
        heads = _get(cfg, "num_attention_heads", name)
        if not isinstance(hidden, int) or not isinstance(heads, int) or heads <= 0:
            raise ShapeError(f"config.json of {name!r}: hidden_size and num_attention_heads must be positive integers")
        act = str(_get(cfg, "hidden_act", name, "silu"))
        moe: dict[str, Any] = {}
        if mt == "mixtral":  # softmax over the top-k router logits = softmax, top-k, renormalise
            moe = {"n_experts": _get(cfg, "num_local_experts", name), "experts_per_token": _get(cfg, "num_experts_per_tok", name),
                   "norm_topk_prob": True}
        elif mt == "qwen3_moe":
            if cfg.get("decoder_sparse_step", 1) != 1 or cfg.get("mlp_only_layers"):
                raise SpecError(f"config.json of {name!r}: interleaved dense/MoE layers (decoder_sparse_step, "
                                "mlp_only_layers) are not supported; every layer must be MoE")
            moe = {"n_experts": _get(cfg, "num_experts", name), "experts_per_token": _get(cfg, "num_experts_per_tok", name),
                   "d_ff_expert": _get(cfg, "moe_intermediate_size", name),
                   "norm_topk_prob": bool(cfg.get("norm_topk_prob", False))}
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
        return ModelSpec(
            name=name,
            family=mt,
            n_layers=_get(cfg, "num_hidden_layers", name),
            d_model=hidden,
            n_heads=heads,
            n_kv_heads=_get(cfg, "num_key_value_heads", name, heads),
            head_dim=_get(cfg, "head_dim", name, hidden // heads),
            d_ff=_get(cfg, "intermediate_size", name),
            vocab_size=_get(cfg, "vocab_size", name),
            max_seq_len=_get(cfg, "max_position_embeddings", name, 4096),
            activation="gelu" if act.startswith("gelu") else ("silu" if act == "swish" else act),
            gated_mlp=True,
            norm="rmsnorm",
            norm_eps=_num(_get(cfg, "rms_norm_eps", name, 1e-5), "rms_norm_eps", name),
            position="rope",
            rope_theta=_num(_get(cfg, "rope_theta", name, 10000.0), "rope_theta", name),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            weight_dtype=dtype,
            act_dtype=dtype,
            kv_dtype=dtype,
            sliding_window=window or 0,
            **moe,
        )
    if mt == "gpt2":
        hidden = _get(cfg, "n_embd", name)
        heads = _get(cfg, "n_head", name)
        if not isinstance(hidden, int) or not isinstance(heads, int) or heads <= 0:
            raise ShapeError(f"config.json of {name!r}: n_embd and n_head must be positive integers")
        return ModelSpec(
            name=name,
            family="gpt2",
            n_layers=_get(cfg, "n_layer", name),
            d_model=hidden,
            n_heads=heads,
            n_kv_heads=heads,
            head_dim=hidden // heads,
            d_ff=_get(cfg, "n_inner", name, 4 * hidden),
            vocab_size=_get(cfg, "vocab_size", name),
            max_seq_len=_get(cfg, "n_positions", name, 1024),
            activation="gelu",
            gated_mlp=False,
            norm="layernorm",
            norm_eps=_num(_get(cfg, "layer_norm_epsilon", name, 1e-5), "layer_norm_epsilon", name),
            position="learned",
            tied_embeddings=True,
            weight_dtype=dtype,
            act_dtype=dtype,
            kv_dtype=dtype,
        )
    raise SpecError(
        f"config.json of {name!r}: model_type {mt!r} is not supported; supported: {', '.join(HF_MODEL_TYPES)}"
    )


# ---------------------------------------------------------------------------- loading
def list_models() -> list[str]:
    """Names of the shipped model presets."""
    return sorted(p.stem for p in MODELS_DIR.iterdir() if p.suffix in (".json", ".yaml"))


def _read_structured(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror}") from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
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
            if path.suffix in (".json", ".yaml", ".yml") or "/" in str(ref):
                raise SpecError(f"model file {str(ref)!r} does not exist")
            raise PresetNotFound(f"unknown model {str(ref)!r}; presets: {', '.join(list_models())} (or give a file path)")
    data = _read_structured(path)
    name = path.stem if path.stem != "config" else path.parent.name
    if isinstance(data, dict) and "model_type" in data:
        return model_from_hf_config(data, name)
    return model_from_dict(data, name)
