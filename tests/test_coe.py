"""Composition-of-experts serving (sim/coe.py): exact LRU, the cache's size from device memory, the
per-request time from the system simulator, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.arch.system import load_system
from xpusim.errors import CapacityError, SpecError
from xpusim.sim.coe import expert_stream, lru_hits, simulate_coe, switch_seconds
from xpusim.workloads.model import load_model

FAST = settings(max_examples=60, deadline=None)
streams = st.lists(st.integers(0, 12), min_size=1, max_size=200).map(np.array)


def stack_distance_hits(stream, slots):
    """LRU by its definition: a request hits when fewer than ``slots`` distinct experts were asked for
    since that expert's last request."""
    hits = []
    for i, e in enumerate(stream.tolist()):
        before = stream[:i].tolist()
        if e not in before:
            hits.append(False)
            continue
        last = len(before) - 1 - before[::-1].index(e)
        hits.append(len(set(before[last + 1:])) < slots)
    return np.array(hits, dtype=bool)


@FAST
@given(stream=streams, slots=st.integers(0, 14))
def test_lru_is_exact(stream, slots):
    assert np.array_equal(lru_hits(stream, slots), stack_distance_hits(stream, slots))


@FAST
@given(stream=streams, slots=st.integers(0, 13))
def test_a_larger_cache_never_hits_less(stream, slots):
    small, big = lru_hits(stream, slots), lru_hits(stream, slots + 1)
    assert np.all(big >= small)  # LRU is a stack algorithm: the larger cache holds the smaller one's contents
    if slots + 1 >= len(set(stream.tolist())):
        assert (~big).sum() == len(set(stream.tolist()))  # only the first request to each expert misses


def test_streams_are_seeded_and_skew_concentrates_them():
    a, b = expert_stream(150, 5000, 1.0, 7), expert_stream(150, 5000, 1.0, 7)
    assert np.array_equal(a, b) and not np.array_equal(a, expert_stream(150, 5000, 1.0, 8))
    uniform = np.bincount(expert_stream(10, 100_000, 0.0, 0), minlength=10) / 100_000
    assert np.allclose(uniform, 0.1, atol=0.01)
    skewed = np.bincount(expert_stream(10, 100_000, 2.0, 0), minlength=10) / 100_000
    p = np.arange(1, 11) ** -2.0
    assert np.allclose(skewed, p / p.sum(), atol=0.01)


def test_the_cache_is_what_device_memory_holds_beside_the_router_and_kv():
    m = load_model("llama-2-7b")
    for name in ("sn40l-node", "dgx-h100"):
        s = load_system(name)
        r = simulate_coe(name, m, experts=150, requests=200, prompt=128, output=20)
        cap = s.device.backing.capacity_bytes * s.device.backing.instances * s.n_devices
        free = cap - m.weights_bytes - m.kv_cache_bytes(1, 148) - m.kv_cache_bytes(1, 128)  # the router reads the prompt
        assert r.slots == int(free // m.weights_bytes)
        no_router = simulate_coe(name, m, experts=150, requests=200, prompt=128, output=20, router=False)
        assert no_router.slots == r.slots + 1 and no_router.router_s == 0.0
        one = simulate_coe(name, m, experts=100, requests=200, prompt=128, output=20, tp=1)
        per_device = s.device.backing.capacity_bytes * s.device.backing.instances
        assert one.slots == int((per_device - m.weights_bytes - m.kv_cache_bytes(1, 148) - m.kv_cache_bytes(1, 128))
                                // m.weights_bytes)


def test_every_miss_pays_the_switch_and_hits_do_not():
    m = load_model("llama-2-7b")
    cold = simulate_coe("sn40l-node", m, experts=150, requests=300, prompt=128, output=20, slots=0)
    warm = simulate_coe("sn40l-node", m, experts=150, requests=300, prompt=128, output=20)
    assert cold.hit_rate == 0.0 and 0.0 < warm.hit_rate < 1.0
    assert cold.request_s - warm.request_s == pytest.approx(warm.hit_rate * cold.switch_s)
    assert cold.switch_s == pytest.approx(switch_seconds(load_system("sn40l-node"), m.weights_bytes, 8))
    h100 = simulate_coe("dgx-h100", m, experts=150, requests=300, prompt=128, output=20, slots=0, tp=1)
    assert h100.switch_s / cold.switch_s == pytest.approx(15.87, rel=0.01)  # the model-switch reproduction's ratio
    h100_tp8 = simulate_coe("dgx-h100", m, experts=150, requests=300, prompt=128, output=20, slots=0)
    assert h100_tp8.switch_s == pytest.approx(h100.switch_s / 8)  # each GPU loads its eighth over its own link


def test_popular_experts_shrink_the_dataflow_nodes_lead():
    """The dataflow node's edge is the DDR-to-HBM copy; the more requests hit the cache, the less it shows."""
    m = load_model("llama-2-7b")
    ratio = {}
    for skew in (0.0, 1.5):
        sn = simulate_coe("sn40l-node", m, experts=150, requests=2000, prompt=128, output=20, skew=skew)
        dgx = simulate_coe("dgx-h100", m, experts=150, requests=2000, prompt=128, output=20, skew=skew, tp=1)
        ratio[skew] = dgx.request_s / sn.request_s
    assert ratio[0.0] > ratio[1.5] > 1.0


@pytest.mark.parametrize("kw, err, msg", [
    ({"experts": 0}, SpecError, "experts must be a positive integer"),
    ({"requests": -1}, SpecError, "requests must be"),
    ({"skew": -0.5}, SpecError, "skew"),
    ({"slots": -1}, SpecError, "slots"),
    ({"slots": 40}, SpecError, "from 0 to 39"),
    ({"seed": -1}, SpecError, "seed"),
    ({"tp": 9}, SpecError, "tp must be 1 to 8"),
    ({"experts": 10**10}, SpecError, "at most 1,000,000 experts"),
    ({"experts": 2000}, CapacityError, "use at most 979 experts"),
    ({"experts": 200, "tp": 1}, CapacityError, "use at most 122 experts"),  # one socket's DDR
    ({"batch": 100_000}, CapacityError, "not one llama-2-7b expert"),
])
def test_bad_coe_inputs_are_one_line_errors(kw, err, msg):
    args = {"experts": 150, "requests": 10, "prompt": 128, "output": 20, **kw}
    with pytest.raises(err, match=msg) as e:
        simulate_coe("sn40l-node", "llama-2-7b", **args)
    assert "\n" not in str(e.value)


def test_a_system_without_a_host_link_cannot_switch():
    with pytest.raises(SpecError, match="host_link"):
        simulate_coe("4x-a100-nvlink", "llama-2-7b", experts=4, requests=4, prompt=16, output=2)


def test_cli_coe(capsys):
    from xpusim.cli import main

    assert main(["coe", "--system", "sn40l-node", "--model", "llama-2-7b", "--requests", "300", "--vs", "dgx-a100",
                 "--vs-tp", "1"]) == 0
    out = capsys.readouterr().out
    assert "hit rate" in out and "dgx-a100 (tp 1)" in out and "sn40l-node over dgx-a100:" in out
    assert main(["coe", "--system", "sn40l-node", "--model", "llama-2-7b", "--requests", "300", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["runs"][0]["slots"] >= 1 and 0 <= d["runs"][0]["hit_rate"] <= 1
    assert main(["coe", "--system", "sn40l-node", "--model", "llama-2-7b", "--skew", "-1"]) == 2
    assert "skew" in capsys.readouterr().err


def test_coe_runs_in_the_devices_engine_formats(tmp_path, capsys):
    """A system of FPGAs serves in its engine's INT8 formats (as simulate does), or in the formats given."""
    from xpusim.cli import main

    (tmp_path / "u280x4.yaml").write_text(
        "name: u280x4\ndevice: alveo-u280\ndevices_per_node: 4\nnodes: 1\nhost_link: 15.75 GB/s\n"
        "intra: {topology: ring, bandwidth: 12.5 GB/s, latency: 2 us}\n")
    assert main(["coe", "--system", str(tmp_path / "u280x4.yaml"), "--model", "llama-2-7b", "--experts", "8",
                 "--requests", "50", "--json"]) == 0
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert run["expert_bytes"] < 7.5e9  # INT8 weights, not bf16's 13.5 GB


def test_vs_tp_without_vs_is_a_one_line_error(capsys):
    from xpusim.cli import main

    assert main(["coe", "--system", "sn40l-node", "--model", "llama-2-7b", "--experts", "10", "--vs-tp", "2"]) == 2
    assert "--vs-tp sizes the experts of the --vs system" in capsys.readouterr().err
