"""Chunked prefill equals one-shot prefill; verifying a drafted token tree yields the tokens greedy
decoding yields; expected accepted tokens follow the speculative-decoding formula."""

import dataclasses

import numpy as np
import pytest
import xpusim
from hypothesis import given, settings
from hypothesis import strategies as st
from test_functional_reference import TINY_LLAMA, TINY_MOE
from test_mla import TINY_MLA
from test_ssm import TINY_JAMBA, TINY_MAMBA2
from xpusim import SpecError
from xpusim.sim.steps import expected_tokens, simulate_chunked_prefill, speculate, tree_parents
from xpusim.workloads import Decode, Prefill, build_trace
from xpusim.workloads.functional.reference import execute, init_weights
from xpusim.workloads.phases import Verify, chunk_steps


@pytest.mark.parametrize("model", [TINY_LLAMA, TINY_MOE, TINY_MLA, TINY_MAMBA2, TINY_JAMBA], ids=lambda m: m.name)
@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_chunked_prefill_equals_one_shot(model, chunk):
    rng = np.random.default_rng(9)
    ids = rng.integers(0, model.vocab_size, size=(2, 10))
    w = init_weights(build_trace(model, Prefill(2, 10)), seed=7)
    one_shot, _ = execute(build_trace(model, Prefill(2, 10)), w, ids)
    cache: dict = {}
    for step in chunk_steps(2, 10, chunk):
        logits, cache = execute(build_trace(model, step), w, ids[:, step.prefix:step.prefix + step.seq], cache)
    np.testing.assert_allclose(logits, one_shot, rtol=1e-9, atol=1e-9)


def _greedy(model, w, prompt, n):
    """Tokens and logits of plain greedy decoding, one step at a time."""
    b, p = prompt.shape
    logits, cache = execute(build_trace(model, Prefill(b, p)), w, prompt)
    out, steps = [logits.argmax(-1)], [logits]
    for i in range(n - 1):
        logits, cache = execute(build_trace(model, Decode(b, p + 1 + i)), w, out[-1][:, None], cache)
        out.append(logits.argmax(-1))
        steps.append(logits)
    return np.stack(out, axis=1), np.stack(steps, axis=1)


TINY_SWA = dataclasses.replace(TINY_LLAMA, name="tiny-swa", sliding_window=4)  # the window inside the tree's span


@pytest.mark.parametrize("model", [TINY_LLAMA, TINY_MLA, TINY_SWA], ids=lambda m: m.name)
def test_tree_verification_accepts_the_greedy_tokens(model):
    rng = np.random.default_rng(10)
    prompt = rng.integers(0, model.vocab_size, size=(1, 5))
    w = init_weights(build_trace(model, Prefill(1, 5)), seed=8)
    greedy, step_logits = _greedy(model, w, prompt, 5)
    greedy = greedy[0]  # t1..t5
    # a tree rooted at t1: a wrong branch first, then the greedy path t2, t3, t4 with a sibling decoy at each level
    parents = (0, 0, 2, 2, 4, 4)
    wrong = [(int(greedy[k]) + 1) % model.vocab_size for k in (1, 2, 3)]
    tokens = [int(greedy[0]), wrong[0], int(greedy[1]), wrong[1], int(greedy[2]), wrong[2], int(greedy[3])]
    assert len(tokens) == len(parents) + 1
    _, cache = execute(build_trace(model, Prefill(1, 5)), w, prompt)
    logits, _ = execute(build_trace(model, Verify(1, 5, len(parents), parents)), w, np.array([tokens]), cache)
    logits = logits.reshape(len(tokens), -1)
    for depth, node in enumerate((0, 2, 4, 6)):  # the greedy path sees exactly what decoding saw
        np.testing.assert_allclose(logits[node], step_logits[0, depth + 1], rtol=1e-9, atol=1e-9)
    children = {i: [j for j, p in enumerate(parents, start=1) if p == i] for i in range(len(tokens))}
    node, accepted = 0, []
    while True:  # greedy tree acceptance: follow the child whose token is the target's argmax
        want = int(logits[node].argmax())
        nxt = next((c for c in children[node] if tokens[c] == want), None)
        accepted.append(want)
        if nxt is None:
            break
        node = nxt
    assert accepted == [int(t) for t in greedy[1:5]]  # 3 drafts accepted plus the bonus token


def test_chain_verification_logits_equal_decode_steps():
    model = TINY_LLAMA
    rng = np.random.default_rng(11)
    ids = rng.integers(0, model.vocab_size, size=(2, 8))
    w = init_weights(build_trace(model, Prefill(2, 8)), seed=9)
    _, cache = execute(build_trace(model, Prefill(2, 5)), w, ids[:, :5])
    logits, _ = execute(build_trace(model, Verify(2, 5, 2)), w, ids[:, 5:8], cache)
    for k in range(3):  # position k of the verify step = prefill of 6 + k tokens
        ref, _ = execute(build_trace(model, Prefill(2, 6 + k)), w, ids[:, :6 + k])
        np.testing.assert_allclose(logits.reshape(2, 3, -1)[:, k], ref, rtol=1e-9, atol=1e-9)


@given(a=st.floats(0, 1), k=st.integers(0, 12), w=st.integers(1, 4))
def test_expected_tokens_bounds_and_monotone(a, k, w):
    e = expected_tokens(a, k, w)
    assert 1 - 1e-12 <= e <= k + 1 + 1e-12
    assert expected_tokens(min(1.0, a + 0.05), k, w) >= e - 1e-12
    assert expected_tokens(a, k + 1, w) >= e - 1e-12
    assert expected_tokens(a, k, w + 1) >= e - 1e-12


def test_expected_tokens_matches_monte_carlo():
    rng = np.random.default_rng(12)
    a, k = 0.7, 5
    accept = rng.random((200_000, k)) < a
    accepted = np.where(accept.all(axis=1), k, accept.argmin(axis=1))  # leading run of accepted drafts
    assert expected_tokens(a, k) == pytest.approx(accepted.mean() + 1, rel=0.01)


def test_tree_shape_and_speculation_costs():
    assert tree_parents(2, 2) == (0, 0, 1, 1, 2, 2)
    spec = speculate("h100-sxm", "llama-3-70b", 1, 2048, 4, 0.8, draft_model="llama-3-8b", check_memory=False)
    assert spec.verify_s >= spec.decode_s  # verifying 5 tokens costs at least one decode step
    assert spec.verify_s < 2 * spec.decode_s  # ... but small-batch decode is weight-bound, not token-bound
    assert spec.speedup > 1.5
    slow = speculate("h100-sxm", "llama-3-70b", 1, 2048, 4, 0.1, draft_model="llama-3-8b", check_memory=False)
    assert slow.speedup < 1  # a poor drafter makes decoding slower
    with pytest.raises(SpecError, match="drafter"):
        speculate("h100-sxm", "llama-3-8b", 1, 512, 3, 0.8)
    with pytest.raises(SpecError, match="Medusa"):
        speculate("h100-sxm", "llama-3-8b", 1, 512, 3, 0.8, medusa_heads=2)


def test_chunked_prefill_costs_at_least_one_shot():
    one = xpusim.simulate("h100-sxm", "llama-3-8b", Prefill(1, 8192))
    chunked = simulate_chunked_prefill("h100-sxm", "llama-3-8b", 1, 8192, 2048)
    assert chunked.inputs["steps"] == 4 and chunked.tokens == one.tokens
    assert one.latency_s <= chunked.latency_s < 1.3 * one.latency_s  # weights re-read per chunk
    assert chunked.kv_cache_bytes == one.kv_cache_bytes


def test_shared_prefix_decode_equals_plain_decode():
    """Hydragen decomposition: prefix attended once for the batch, suffixes per sequence, merged by
    log-sum-exp — the same logits as decoding each sequence with its whole context."""
    model = TINY_LLAMA
    rng = np.random.default_rng(14)
    prefix = rng.integers(0, model.vocab_size, size=(1, 5))
    suffix = rng.integers(0, model.vocab_size, size=(3, 3))
    ids = np.concatenate([np.repeat(prefix, 3, axis=0), suffix], axis=1)  # 3 sequences, 8 tokens each
    w = init_weights(build_trace(model, Prefill(3, 8)), seed=11)
    _, full = execute(build_trace(model, Prefill(3, 7)), w, ids[:, :7])
    plain, _ = execute(build_trace(model, Decode(3, 8)), w, ids[:, 7:], full)
    shared = {}
    for i in range(model.n_layers):
        for kv in ("k", "v"):
            c = full[f"layer.{i}.{kv}_cache"]
            shared[f"layer.{i}.{kv}_prefix"] = c[0, :5]  # one copy of the prefix for the batch
            shared[f"layer.{i}.{kv}_cache"] = c[:, 5:]  # each sequence's own tokens
    logits, cache = execute(build_trace(model, Decode(3, 8, shared_prefix=5)), w, ids[:, 7:], shared)
    np.testing.assert_allclose(logits, plain, rtol=1e-9, atol=1e-9)
    assert cache["layer.0.k_cache"].shape[1] == 3


def test_shared_prefix_on_a_window_beyond_its_span_is_refused():
    """A sliding window that drops the oldest context tokens would drop the shared prefix too."""
    inside = dataclasses.replace(TINY_SWA, sliding_window=16)
    build_trace(inside, Decode(3, 8, shared_prefix=5))  # the whole context inside the window: the split holds
    with pytest.raises(SpecError, match="sliding window keeps 4 of the 8"):
        build_trace(TINY_SWA, Decode(3, 8, shared_prefix=5))
    with pytest.raises(SpecError, match="--shared-prefix"):
        xpusim.simulate("h100-sxm", "mistral-7b", Decode(8, 8192, shared_prefix=1024))


def test_shared_prefix_reads_the_prefix_once():
    plain = xpusim.simulate("h100-sxm", "llama-3-8b", Decode(64, 8192))
    shared = xpusim.simulate("h100-sxm", "llama-3-8b", Decode(64, 8192, shared_prefix=7168))
    m = xpusim.load_model("llama-3-8b")
    assert shared.kv_cache_bytes == m.kv_bytes_per_token * (7168 + 64 * 1024)
    att = shared.ops[shared.ops.name == "prefix_attention"]
    assert float(att.intensity.iloc[0]) > 30 * float(plain.ops[plain.ops.kind == "attention"].intensity.iloc[0])
    assert shared.latency_s < 0.5 * plain.latency_s
    with pytest.raises(SpecError, match="shorter than the context"):
        Decode(4, 100, shared_prefix=100)


@settings(max_examples=80, deadline=None)
@given(q=st.integers(2, 40), extra=st.integers(0, 40), window=st.integers(0, 50), sinks=st.integers(0, 6))
def test_useful_flops_count_the_causal_masks_pairs(q, extra, window, sinks):
    """A causal attention op's useful FLOPs are its full FLOPs times the share of (query, key) pairs the
    mask keeps: query i at position s - q + i sees keys j <= that position, within the window (and the
    sinks) when there is one — counted pair by pair."""
    import numpy as np
    from xpusim.workloads.einsum import Op, Tensor

    s = q + extra
    op = Op("score", "matmul", (("q", q), ("s", s), ("e", 4)),
            (Tensor("a", ("q", "e"), "bf16"), Tensor("b", ("s", "e"), "bf16", "kv")), Tensor("c", ("q", "s"), "fp32"),
            attrs={"causal": True, "window": window, "sinks": sinks if window else 0})
    pos = np.arange(s - q, s)[:, None]
    j = np.arange(s)[None, :]
    keep = j <= pos
    if window:
        keep &= (j > pos - window) | (j < sinks)
    assert op.useful_flops == pytest.approx(op.flops * keep.sum() / (q * s))


@settings(max_examples=80, deadline=None)
@given(q=st.integers(2, 70), extra=st.integers(0, 70), window=st.integers(0, 60), sinks=st.integers(0, 6),
       bq=st.sampled_from([1, 4, 16, 64]), bk=st.sampled_from([1, 4, 16, 64]))
def test_kept_block_fraction_is_the_share_of_blocks_with_an_unmasked_pair(q, extra, window, sinks, bq, bk):
    """A blocked kernel computes a block of (query, key) pairs unless the mask empties it: counted block
    by block against the pair mask (sinks with whole key blocks only at block_k = 1)."""
    import numpy as np
    from xpusim.workloads.einsum import Op, Tensor

    s = q + extra
    sinks = sinks if window and bk == 1 else 0
    op = Op("score", "matmul", (("q", q), ("s", s), ("e", 4)),
            (Tensor("a", ("q", "e"), "bf16"), Tensor("b", ("s", "e"), "bf16", "kv")), Tensor("c", ("q", "s"), "fp32"),
            attrs={"causal": True, "window": window, "sinks": sinks})
    pos = np.arange(s - q, s)[:, None]
    j = np.arange(s)[None, :]
    keep = j <= pos
    if window:
        keep &= (j > pos - window) | (j < sinks)
    kept = 0  # (query, key) pairs in blocks with an unmasked pair (a partial last block has fewer rows)
    for a in range(0, q, bq):
        rows = keep[a:a + bq]
        for b in range(0, s, bk):
            kept += rows.shape[0] * min(bk, s - b) if rows[:, b:b + bk].any() else 0
    assert op.kept_block_fraction(bq, bk) == pytest.approx(kept / (q * s))


def test_achieved_throughput_stays_below_the_peak_on_a_long_causal_prefill():
    from xpusim import simulate
    from xpusim.arch import load_arch

    r = simulate("h100-sxm", "llama-3-8b", Prefill(1, 16384))
    assert r.summary()["achieved_flops_per_s"] < load_arch("h100-sxm").peak_flops("bf16")


def test_a_drafter_with_another_vocabulary_is_refused():
    with pytest.raises(SpecError, match="vocabulary") as e:
        speculate("h100-sxm", "llama-3-8b", 1, 512, 3, 0.7, draft_model="mamba-2.8b")
    assert "\n" not in str(e.value)
