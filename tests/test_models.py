import dataclasses
import json

import numpy as np
import pytest
from xpusim.dtypes import get_dtype
from xpusim.errors import PresetNotFound, ShapeError, SpecError, XpusimError
from xpusim.workloads import Decode, Prefill, Trace, build_trace, list_models, load_model


def test_presets_load_with_published_sizes():
    assert set(list_models()) >= {"llama-2-7b", "llama-3-8b", "llama-3-70b", "gpt3-175b"}
    # parameter counts as published (billions): Llama-2-7B 6.74, Llama-3-8B 8.03, Llama-3-70B 70.6, GPT-3 175
    expect = {"llama-2-7b": 6.74, "llama-3-8b": 8.03, "llama-3-70b": 70.6, "gpt3-175b": 175.0}
    for name, billions in expect.items():
        m = load_model(name)
        assert abs(m.params / 1e9 - billions) / billions < 0.01, (name, m.params)


def test_kv_bytes_per_token_llama3_8b():
    # 2 (K,V) x 32 layers x 8 KV heads x 128 x 2 bytes = 128 KiB
    assert load_model("llama-3-8b").kv_bytes_per_token == 128 * 1024


def test_hf_config_loads(tmp_path):
    cfg = {"model_type": "mistral", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
           "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000, "torch_dtype": "bfloat16"}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    m = load_model(str(p))
    assert (m.n_heads, m.n_kv_heads, m.head_dim, m.q_per_kv) == (8, 2, 32, 4)


def test_unknown_model_type_names_supported(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "bloom", "hidden_size": 8}))
    with pytest.raises(SpecError, match="supported: llama"):
        load_model(str(p))


def test_unknown_preset():
    with pytest.raises(PresetNotFound, match="presets: "):
        load_model("llama-9")


@pytest.mark.parametrize("phase", [Prefill(2, 16), Decode(3, 33)])
def test_trace_is_one_block_repeated_and_roundtrips(phase):
    m = load_model("llama-3-8b")
    tr = build_trace(m, phase)
    layer = [b for b in tr.blocks if b.name == "layer"][0]
    assert layer.repeat == m.n_layers
    back = Trace.from_json(tr.to_json())
    assert back.to_dict() == tr.to_dict()
    assert back.flops == tr.flops


def test_gqa_r_dimension_is_reuse_of_k():
    tr = build_trace(load_model("llama-3-8b"), Decode(1, 128))
    score = [op for _, op in tr.ops() if op.name == "attn_score"][0]
    assert score.sizes["r"] == 4
    k = score.inputs[1]
    assert "r" not in k.dims  # the K cache does not index r: it is reused across the group


def test_matmul_flops_prefill_llama3_8b():
    m = load_model("llama-3-8b")
    tr = build_trace(m, Prefill(1, 2048))
    linear = sum(op.flops * b.repeat for b, op in tr.ops() if op.kind == "matmul" and "attn" not in op.name
                 and op.name != "lm_head")
    # 2 FLOPs per parameter per token for the layer weights
    layer_weights = m.n_layers * (m.layer_params - 2 * m.d_model)
    assert linear == pytest.approx(2 * 2048 * layer_weights)


def test_bad_sizes():
    with pytest.raises(ShapeError):
        Decode(0, 10)
    with pytest.raises(ShapeError):
        Prefill(1, -4)


def test_hf_configs_with_an_unknown_dtype_or_fractional_heads_are_refused(tmp_path):
    import json

    from xpusim.errors import SpecError
    from xpusim.workloads.model import MODELS_DIR, load_model

    base = json.loads((MODELS_DIR / "llama-3-8b.json").read_text())
    for change, msg in (({"torch_dtype": "float8_e4m3"}, "torch_dtype"), ({"hidden_size": 4100}, "not a multiple")):
        p = tmp_path / "config.json"
        p.write_text(json.dumps({**base, **change}))
        with pytest.raises(SpecError, match=msg) as e:
            load_model(str(p))
        assert "\n" not in str(e.value)


def test_hf_config_numbers_of_the_wrong_type_and_fractional_jamba_heads_are_refused():
    import copy
    import json

    from xpusim.workloads.hf_config import model_from_hf_config
    from xpusim.workloads.model import MODELS_DIR

    ds = json.loads((MODELS_DIR / "deepseek-v3.json").read_text())
    bad = copy.deepcopy(ds)
    bad["qk_rope_head_dim"] = "64"
    with pytest.raises(SpecError, match="qk_rope_head_dim must be a whole number"):
        model_from_hf_config(bad, "ds")
    jamba = json.loads((MODELS_DIR / "jamba-v0.1.json").read_text())
    jamba["hidden_size"] = 4100
    with pytest.raises(SpecError, match="not a multiple of 32 attention heads"):
        model_from_hf_config(jamba, "jamba")
    assert model_from_hf_config(ds, "ds").embed_dtype == "bf16"  # the fp8 checkpoint's embeddings and head


def _shipped_hf_configs():
    from xpusim.workloads.model import MODELS_DIR

    return sorted(p.stem for p in MODELS_DIR.glob("*.json") if p.stem != "bitnet-b1.58-2b4t")


@pytest.mark.parametrize("preset", _shipped_hf_configs())
def test_an_fp8_quantization_config_sets_the_weight_format_of_every_family(preset):
    from xpusim.workloads.hf_config import model_from_hf_config
    from xpusim.workloads.model import MODELS_DIR

    cfg = json.loads((MODELS_DIR / f"{preset}.json").read_text())
    cfg.pop("quantization_config", None)
    plain = model_from_hf_config(cfg, preset)
    for fmt in ("e4m3", "e5m2"):
        m = model_from_hf_config({**cfg, "quantization_config": {"quant_method": "fp8", "fmt": fmt}}, preset)
        assert (m.weight_dtype, m.act_dtype, m.kv_dtype) == (f"fp8-{fmt}", plain.act_dtype, plain.kv_dtype)
        assert m.embedding_dtype == plain.weight_dtype  # the checkpoints keep the embeddings and LM head
        emb = m.embedding_params * get_dtype(plain.weight_dtype).bytes
        assert m.weights_bytes - emb == pytest.approx((plain.weights_bytes - emb) / get_dtype(plain.weight_dtype).bytes)


def test_gptq_and_awq_configs_load_as_int4_with_their_group_size():
    from xpusim.workloads.hf_config import model_from_hf_config
    from xpusim.workloads.model import MODELS_DIR

    cfg = json.loads((MODELS_DIR / "llama-3-8b.json").read_text())
    for q, fmt in (({"quant_method": "gptq", "bits": 4, "group_size": 128}, "int4-g128"),
                   ({"quant_method": "awq", "bits": 4, "group_size": 64, "version": "gemm"}, "int4-g64"),
                   ({"quant_method": "gptq", "bits": 4, "group_size": -1}, "int4-g4096")):  # per channel: one scale a row
        m = model_from_hf_config({**cfg, "quantization_config": q}, "llama")
        assert (m.weight_dtype, m.embedding_dtype, m.act_dtype) == (fmt, "bf16", "bf16")
    assert get_dtype("int4-g64").bytes == 0.5 + 2 / 64  # a bf16 scale per group


@pytest.mark.parametrize("q, msg", [
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "quant_method 'bitsandbytes' is not read"),
    ({"quant_method": "fbgemm_fp8"}, "quant_method 'fbgemm_fp8' is not read"),
    ({"quant_method": "bitnet"}, "quant_method 'bitnet' is not read"),  # only a bitnet model is ternary
    ({"quant_method": "gptq", "bits": 8, "group_size": 128}, "bits 8 is not read"),
    ({"quant_method": "awq", "bits": 4, "group_size": 0}, "group_size 0"),
    ({"quant_method": "fp8", "fmt": "e3m4"}, "fmt 'e3m4'"),
    ("fp8", "must be an object"),
])
def test_an_unread_quantization_config_is_a_one_line_error(tmp_path, capsys, q, msg):
    from xpusim.cli import main
    from xpusim.workloads.model import MODELS_DIR

    p = tmp_path / "config.json"
    p.write_text(json.dumps({**json.loads((MODELS_DIR / "llama-3-8b.json").read_text()), "quantization_config": q}))
    with pytest.raises(SpecError, match=msg):
        load_model(str(p))
    assert main(["simulate", "--arch", "h100-sxm", "--model", str(p), "--phase", "decode", "--context", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err and "set the format with --weight-dtype" in err


def test_simulate_reports_an_fp8_llama_config_in_fp8(tmp_path, capsys):
    from xpusim.cli import main
    from xpusim.workloads.model import MODELS_DIR

    p = tmp_path / "config.json"
    q = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    p.write_text(json.dumps({**json.loads((MODELS_DIR / "llama-3-8b.json").read_text()), "quantization_config": q}))
    assert main(["simulate", "--arch", "h100-sxm", "--model", str(p), "--phase", "decode", "--context", "8",
                 "--quiet"]) == 0
    assert "formats: weights fp8-e4m3" in capsys.readouterr().out


# --- review30: fields that would describe another model, or one that cannot run ------------------------------------


def _with(base: str, **changes):
    import dataclasses

    return dataclasses.replace(load_model(base), **changes)


@pytest.mark.parametrize("base, changes, message", [
    ("deepseek-v3", {"sliding_window": 2}, "sliding window over multi-head latent attention is not modelled"),
    ("llama-3-8b", {"attn_period": 2}, "attn_period interleaves attention among SSM layers"),
    ("llama-3-8b", {"moe_period": 2}, "moe_period places MoE layers"),
    ("mamba-2.8b", {"sliding_window": 64}, "this SSM model has none"),
    ("t5-base", {"rel_buckets": 0}, "rel_buckets must be at least 1"),
    ("llama-3-8b", {"act_dtype": "ternary"}, "ternary .* is a weight format"),
    ("llama-3-8b", {"kv_dtype": "ternary"}, "give the KV cache an int8"),
    ("deepseek-v3", {"sub_norms": True}, "sub_norms .* are modelled for dense attention layers"),
    ("mixtral-8x7b", {"sub_norms": True}, "drop them or the MLA/MoE fields"),
    ("mixtral-8x7b", {"d_ff": 0, "d_ff_expert": 0, "ssm_kind": "mamba2", "ssm_state": 16, "ssm_expand": 2,
                      "ssm_conv": 4, "ssm_head_dim": 64, "ssm_groups": 1, "attn_period": 2}, "experts need a width"),
])
def test_fields_that_describe_no_modelled_model_are_refused(base, changes, message):
    """Each of these ran with rc 0 and did nothing, or something else (MLA read the whole context
    while memory counted the window)."""
    with pytest.raises(XpusimError, match=message):
        _with(base, **changes)


def test_learned_positions_past_their_table_are_costed_but_not_executed():
    """Architecture studies run GPT-3 past its 2,048 positions (AttAcc: 2,048 + 128); the cost model
    extends the table, and the numeric reference refuses in one line (it raised IndexError)."""
    from xpusim.workloads.functional.reference import execute, init_weights

    assert build_trace(load_model("gpt3-6.7b"), Decode(1, 2176)).n_ops > 0
    tiny = dataclasses.replace(load_model("gpt3-6.7b"), name="tiny-gpt", n_layers=1, d_model=16, n_heads=2, n_kv_heads=2,
                               head_dim=8, d_ff=32, vocab_size=11, max_seq_len=8)
    trace = build_trace(tiny, Prefill(1, 10))
    with pytest.raises(ShapeError, match="past the learned position table of 8 rows"):
        execute(trace, init_weights(trace, seed=0), np.zeros((1, 10), dtype=np.int64))


@pytest.mark.parametrize("family, key", [("qwen3_moe", "moe_intermediate_size"), ("deepseek_v3", "kv_lora_rank"),
                                         ("jamba", "attn_layer_period"), ("jamba", "expert_layer_period"),
                                         ("llama", "head_dim")])
def test_hugging_face_zero_sizes_are_refused(tmp_path, family, key):
    """In xpusim's YAML 0 means none; a Hugging Face config's 0 loaded as another model (a Qwen3 MoE
    with moe_intermediate_size 0 became a 233 B-parameter model)."""
    src = {"qwen3_moe": "qwen3-30b-a3b", "deepseek_v3": "deepseek-v3", "jamba": "jamba-v0.1", "llama": "llama-3-8b"}[family]
    from pathlib import Path

    import xpusim.workloads.model as model_mod

    cfg = json.loads((Path(model_mod.__file__).parent / "models" / f"{src}.json").read_text())  # shipped HF configs
    cfg[key] = 0
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match=f"{key} must be a whole number >= 1, got 0"):
        load_model(tmp_path)


def test_a_binary_model_file_is_a_one_line_error(tmp_path):
    p = tmp_path / "bin.json"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SpecError, match="not a UTF-8 text file"):
        load_model(p)


def test_qwen_slides_only_from_max_window_layers(tmp_path):
    """Hugging Face slides Qwen's layers from max_window_layers on: with it at the layer count no layer
    slides (every layer slid here before); a window over some layers only is refused."""
    from pathlib import Path

    import xpusim.workloads.model as model_mod

    cfg = json.loads((Path(model_mod.__file__).parent / "models" / "qwen3-30b-a3b.json").read_text())
    cfg.update(sliding_window=4096, max_window_layers=0)
    cfg.pop("use_sliding_window", None)  # transformers' default for Qwen: no window
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert load_model(tmp_path).sliding_window == 0
    cfg.update(use_sliding_window=True, sliding_window=4096, max_window_layers=cfg["num_hidden_layers"])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert load_model(tmp_path).sliding_window == 0
    cfg["max_window_layers"] = 0
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert load_model(tmp_path).sliding_window == 4096
    cfg["max_window_layers"] = 24
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match="per-layer windows are not modelled"):
        load_model(tmp_path)
