"""Multi-device systems and collectives: presets, published NCCL all-reduce bus bandwidths, the
algorithm choice, alpha-beta properties and clear errors."""

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.arch.loader import PRESETS_DIR
from xpusim.arch.system import Link, System, list_systems, load_system, system_from_dict
from xpusim.errors import PresetNotFound, SpecError, XpusimError
from xpusim.sim.collectives import (
    ALGORITHMS,
    KINDS,
    NVLS_EFFICIENCY,
    PROTOCOLS,
    VALID,
    CollectiveCost,
    bus_factor,
    collective_time,
    system_rules,
)
from xpusim.validation.fit_nccl import BANDWIDTH_BOUND_FROM, FILES, LATENCY_BOUND_UPTO, band_errors, compare, read_points

PRESETS = ("4x-a100-nvlink", "dgx-a100", "dgx-h100", "hgx-h200", "tpu-v4-slice-8")
GiB = 2**30


def _multi(name: str, nodes: int) -> System:
    return dataclasses.replace(load_system(name), nodes=nodes)


def _injection_bw(system: System) -> float:
    """An upper bound of what one device can send per second inside a node."""
    links = {"ring": 2, "torus": 2 * len(system.dims), "mesh": 2 * len(system.dims)}.get(system.intra_topology, 1)
    return links * system.intra.bandwidth_Bps


def _supported(system: System, kind: str, algo: str | None, n: int) -> bool:
    if algo is None:
        return True
    if algo not in VALID[kind] or algo == "hierarchical":
        return False
    return algo != "nvls" or (system.in_switch_reduction and n <= system.devices_per_node)


# ---------------------------------------------------------------------------------- presets


def test_every_preset_loads_and_costs_every_collective():
    assert set(PRESETS) <= set(list_systems())
    for name in list_systems():
        s = load_system(name)
        assert s.n_devices == s.devices_per_node * s.nodes >= 2
        assert load_system(s) is s
        for kind in KINDS:
            for size in (1024, GiB):
                c = collective_time(s, kind, size, s.n_devices)
                assert isinstance(c, CollectiveCost) and c.algorithm in ALGORITHMS and c.protocol in PROTOCOLS
                assert c.time_s > 0 and c.energy_j > 0
                assert c.algbw_Bps == pytest.approx(size / c.time_s)
                assert c.busbw_Bps == pytest.approx(c.algbw_Bps * bus_factor(kind, s.n_devices))
                if size == 1024:  # a small message pays at least one link latency
                    assert c.time_s >= s.intra.latency_s
                elif s.nodes == 1 and kind in ("all_reduce", "all_gather", "reduce_scatter"):
                    # a large one moves at a good share of the links' line rate (the fitted protocol
                    # efficiencies and the topology keep it above 30 % of one link on every preset)
                    assert c.busbw_Bps >= 0.3 * s.intra.bandwidth_Bps


def test_preset_key_numbers():
    a100, h100, h200 = load_system("dgx-a100"), load_system("dgx-h100"), load_system("hgx-h200")
    assert a100.intra.bandwidth_Bps == 300e9 and h100.intra.bandwidth_Bps == h200.intra.bandwidth_Bps == 450e9
    assert a100.inter.bandwidth_Bps == 25e9 and h100.inter.bandwidth_Bps == 50e9
    assert a100.nics_per_node == h100.nics_per_node == 8
    assert (a100.device.name, h100.device.name, h200.device.name) == ("a100-80gb", "h100-sxm", "h200")
    four = load_system("4x-a100-nvlink")
    assert (four.devices_per_node, four.intra_topology, four.intra.bandwidth_Bps) == (4, "fully_connected", 300e9)
    tpu = load_system("tpu-v4-slice-8")
    assert (tpu.device.name, tpu.intra_topology, tpu.dims, tpu.intra.bandwidth_Bps) == ("tpu-v4", "mesh", (2, 2, 2), 50e9)
    assert "rules" in a100.meta and "rules" not in h100.meta  # H100 uses the A100's fitted rules
    assert system_rules(h100) == system_rules(a100) and set(system_rules(a100).names()) == set(PROTOCOLS)
    # NVSwitch gen3 reduces in the switch (NVLink SHARP); gen2 and the other fabrics do not
    assert h100.in_switch_reduction and h200.in_switch_reduction
    assert not any(load_system(n).in_switch_reduction for n in ("dgx-a100", "4x-a100-nvlink", "tpu-v4-slice-8"))


def test_user_yaml_with_relative_device(tmp_path):
    dev = tmp_path / "devs"
    dev.mkdir()
    (dev / "my.yaml").write_text((PRESETS_DIR / "a100-80gb.yaml").read_text())
    p = tmp_path / "pod.yaml"
    p.write_text("name: pod\ndevice: devs/my.yaml\ndevices_per_node: 4\nnodes: 2\n"
                 "intra: {topology: torus, dims: [2, 2], bandwidth: 100 GB/s, latency: 1 us, energy_per_byte: 10}\n"
                 "inter: {bandwidth: 12.5 GB/s, latency: 5 us, nics_per_node: 2}\n")
    s = load_system(p)
    assert (s.name, s.n_devices, s.dims, s.nics_per_node) == ("pod", 8, (2, 2), 2)
    assert s.inter.latency_s == pytest.approx(5e-6)
    c = collective_time(s, "all_reduce", 64 * 2**20, 8)
    assert c.time_s > 0 and c.algorithm in VALID["all_reduce"]


# ------------------------------------------------------------------------- published NCCL data


def test_a100_fit_bandwidth_bound_within_15pct():
    """Fit data: every published DGX A100-class point from 256 MiB (the plateau) within 15 %."""
    rows = [r for r in compare("dgx-a100", "a100_8gpu_allreduce.csv") if r["size_bytes"] >= BANDWIDTH_BOUND_FROM]
    assert len(rows) >= 12
    for r in rows:
        assert abs(r["error_pct"]) <= 15.0, r


def test_a100_fit_error_bands():
    """The fit's errors per size band (docs/systems.md): the two A100 machines disagree by up to 64 % at
    mid sizes, so no one curve meets both; each band stays inside its documented range."""
    rows = compare("dgx-a100", "a100_8gpu_allreduce.csv")
    bands = band_errors(rows)
    lo, hi = bands["128 KiB - 128 MiB"]
    assert -30.0 <= lo and hi <= 35.0, bands
    lo, hi = bands[">= 256 MiB"]
    assert -5.0 <= lo and hi <= 5.0, bands
    oci = band_errors([r for r in rows if r["source"] == "oci-bm-gpu4-8"])
    assert all(-10.0 <= lo and hi <= 10.0 for lo, hi in (oci["<= 64 KiB"], oci[">= 256 MiB"])), oci
    # LL128 carries the mid sizes, as in NCCL on NVLink: LL below, Simple above
    protos = {r["size_bytes"]: r["protocol"] for r in rows}
    assert protos[64 * 2**10] == "ll" and protos[4 * 2**20] == "ll128" and protos[GiB] == "simple"


def test_h100_validation_within_15pct():
    """Validation: DGX H100 ring all-reduce (NCCL_ALGO=RING) from its datasheet NVLink4 and the A100's rules."""
    rows = compare("dgx-h100", "h100_8gpu_allreduce.csv")
    assert rows and all(r["size_bytes"] >= BANDWIDTH_BOUND_FROM for r in rows)
    for r in rows:
        assert abs(r["error_pct"]) <= 15.0, r
        assert r["algorithm"] == "ring"
    # left to choose, the model takes NVLS there, as default NCCL does, and gains ~30 % (busbw ~480 GB/s)
    auto = compare("dgx-h100", "h100_8gpu_allreduce.csv", algorithm="nvls")
    assert all(a["predicted_GBps"] > 1.2 * r["predicted_GBps"] for a, r in zip(auto, rows, strict=True))
    assert collective_time(load_system("dgx-h100"), "all_reduce", 2 * GiB, 8).algorithm == "nvls"


def test_h200_default_nccl_nvls_within_15pct():
    """Validation: default NCCL 2.20 on HGX H200 reduces in the NVSwitch (NVLS) for large messages; from
    256 MiB the model (NVLS + the A100's Simple protocol) is within 15 % of every published point."""
    rows = compare("hgx-h200", "h200_8gpu_allreduce.csv")
    big = [r for r in rows if r["size_bytes"] >= BANDWIDTH_BOUND_FROM]
    assert len(big) >= 6
    for r in big:
        assert abs(r["error_pct"]) <= 15.0, r
        assert r["algorithm"] == "nvls" and r["protocol"] == "simple"
    # without in-switch reduction (the ring) the same points are ~27 % low: NVLS is what closes the gap
    ring = compare("hgx-h200", "h200_8gpu_allreduce.csv", algorithm="ring")
    assert all(r["error_pct"] < -20.0 for r in ring if r["size_bytes"] >= BANDWIDTH_BOUND_FROM)


def test_h200_error_bands_documented():
    """docs/systems.md's H200 bands: latency-bound within 15 %; mid sizes predicted low (LL128 and NVLS are
    slower in the model than on Hopper, known gap) but no worse than documented."""
    bands = band_errors(compare("hgx-h200", "h200_8gpu_allreduce.csv"))
    lo, hi = bands["<= 64 KiB"]
    assert -15.0 <= lo and hi <= 15.0, bands
    lo, hi = bands["128 KiB - 128 MiB"]
    assert -50.0 <= lo and hi <= 0.0, bands


def test_latency_bound_sizes_right_order_of_magnitude():
    for name, (system, _, _, algo) in FILES.items():
        for r in compare(system, name, algo):
            if r["size_bytes"] <= LATENCY_BOUND_UPTO:
                assert 1 / 3 <= r["predicted_us"] / r["published_us"] <= 3, (name, r)


def test_whole_a100_curve_within_a_factor_two():
    for r in compare("dgx-a100", "a100_8gpu_allreduce.csv"):
        assert 0.5 <= r["predicted_GBps"] / r["published_GBps"] <= 2.0, r


def test_published_files_parse():
    for name in FILES:
        pts = read_points(name)
        assert pts and all(p.size_bytes > 0 and p.source for p in pts)


# -------------------------------------------------------------------------- algorithm choice


@pytest.mark.parametrize("name, large", [("dgx-a100", "ring"), ("dgx-h100", "nvls"), ("4x-a100-nvlink", "ring"),
                                         ("tpu-v4-slice-8", "ring")])
def test_algorithm_moves_from_latency_optimal_to_bandwidth_optimal(name, large):
    s = load_system(name)
    algos = [collective_time(s, "all_reduce", 2**k, s.devices_per_node).algorithm for k in range(3, 34)]
    assert algos[0] in ("tree", "direct", "halving_doubling")
    assert algos[-1] == large
    first = algos.index(large)
    assert all(a == large for a in algos[first:])


def test_ll128_only_on_nvlink_fabrics():
    """NCCL enables LL128 on NVLink only: the switch and fully connected fabrics use it at mid sizes,
    a PCIe tree and the TPU mesh never do."""
    a100 = load_system("dgx-a100")
    mid = [collective_time(a100, "all_reduce", 2**k, 8) for k in range(18, 26)]
    assert any(c.protocol == "ll128" for c in mid)
    assert any(collective_time(load_system("4x-a100-nvlink"), "all_reduce", 2**k, 4).protocol == "ll128"
               for k in range(18, 26))
    pcie = System(name="p", device=a100.device, devices_per_node=8, nodes=1, intra=a100.intra, intra_topology="pcie",
                  meta={"root_Bps": a100.intra.bandwidth_Bps})
    for s in (pcie, load_system("tpu-v4-slice-8")):
        for kind in KINDS:
            assert all(collective_time(s, kind, 2**k, 8).protocol != "ll128" for k in range(3, 34, 3))


def test_nvls_formula_and_availability():
    """NVLS: each port carries S (n+1)/n per direction (reduce up, multicast down, the rank's own slice
    too) at the Simple efficiency x NCCL's NVLS ratio 5/6; one node of an in-switch-reducing fabric only."""
    h100 = load_system("dgx-h100")
    simple = system_rules(h100).protocol("simple")
    S = 8 * GiB
    c = collective_time(h100, "all_reduce", S, 8, "nvls")
    bw_term = S * 9 / 8 / (450e9 * simple.efficiency * NVLS_EFFICIENCY)
    assert c.time_s == pytest.approx(simple.base_latency_s + 2 * h100.intra.latency_s + bw_term, rel=1e-12)
    assert c.protocol == "simple" and c.busbw_Bps / 1e9 == pytest.approx(1.75 * 8 / 9 * 5 / 6 * 450 * simple.efficiency,
                                                                         rel=0.01)
    assert c.energy_j == pytest.approx(S * 9 * 88e-12, rel=1e-9)  # S (n+1) switched hops
    ring = collective_time(h100, "all_reduce", S, 8, "ring")
    assert ring.time_s > 1.25 * c.time_s  # 2(n-1)/n against (n+1)/n x 6/5 of the port per byte
    # all-gather and reduce-scatter by NVLS move S over the busiest port: slower than the ring in bulk
    for kind in ("all_gather", "reduce_scatter"):
        assert collective_time(h100, kind, S, 8, "nvls").time_s > collective_time(h100, kind, S, 8, "ring").time_s
    # two ranks: the ring (S per port) beats NVLS (3/2 S x 6/5)
    assert collective_time(h100, "all_reduce", S, 2).algorithm == "ring"
    with pytest.raises(SpecError, match="in_switch_reduction") as e:
        collective_time(load_system("dgx-a100"), "all_reduce", S, 8, "nvls")
    _one_line_error(e)
    with pytest.raises(SpecError, match="one node") as e:
        collective_time(_multi("dgx-h100", 2), "all_reduce", S, 16, "nvls")
    _one_line_error(e)
    assert collective_time(_multi("dgx-h100", 2), "all_reduce", S, 16).algorithm == "hierarchical"



def test_hierarchical_across_nodes_for_large_messages():
    s = _multi("dgx-h100", 4)
    big = collective_time(s, "all_reduce", GiB, 32)
    assert big.algorithm == "hierarchical"
    flat = collective_time(s, "all_reduce", GiB, 32, "ring")
    assert big.time_s < flat.time_s
    # the flat ring is held to the node's NICs (8 x 50 GB/s at 96 %), hierarchical to NVLink
    assert flat.busbw_Bps <= 8 * 50e9 * 0.96 * 1.001
    small = collective_time(s, "all_reduce", 1024, 32)
    assert small.algorithm == "tree"


def test_topology_matters():
    base = load_system("dgx-a100")
    link = base.intra
    kw = dict(name="t", device=base.device, devices_per_node=8, nodes=1, intra=link)
    switch = System(intra_topology="switch", **kw)
    ring = System(intra_topology="ring", **kw)
    pcie = System(intra_topology="pcie", meta={"root_Bps": link.bandwidth_Bps}, **kw)
    t = {n: collective_time(s, "all_reduce", GiB, 8, "ring").time_s for n, s in
         (("switch", switch), ("ring", ring), ("pcie", pcie))}
    assert t["ring"] < t["switch"] < t["pcie"]  # a ring has two links per device, PCIe shares one root
    assert t["pcie"] == pytest.approx(t["switch"] * 8, rel=0.05)
    # fully connected: two of four ranks use one link bundle (1/3 of the port), a switch the whole port
    four = load_system("4x-a100-nvlink")
    sw4 = dataclasses.replace(four, intra_topology="switch")
    assert collective_time(four, "all_reduce", GiB, 2, "ring").time_s > 2.5 * collective_time(sw4, "all_reduce", GiB, 2,
                                                                                                "ring").time_s
    # on a mesh, recursive halving/doubling and the ring differ; on a switch they move the same bytes
    tpu = load_system("tpu-v4-slice-8")
    assert collective_time(tpu, "all_reduce", GiB, 8, "halving_doubling").time_s > \
        collective_time(tpu, "all_reduce", GiB, 8, "ring").time_s


def test_single_rank_is_free_and_bus_factors():
    c = collective_time(load_system("dgx-a100"), "all_reduce", 1e6, 1)
    assert c.time_s == 0.0 and c.busbw_Bps == 0.0 and c.energy_j == 0.0 and math.isinf(c.algbw_Bps)
    assert bus_factor("all_reduce", 8) == pytest.approx(1.75)
    assert bus_factor("all_gather", 8) == bus_factor("reduce_scatter", 8) == bus_factor("all_to_all", 8) == 0.875
    assert bus_factor("send_recv", 8) == 1.0


def test_energy_counts_bytes_moved():
    s = load_system("dgx-a100")
    c = collective_time(s, "all_reduce", GiB, 8, "ring")
    assert c.energy_j == pytest.approx(2 * 7 * GiB * 88e-12, rel=1e-9)  # 2(n-1) x S bytes, one switched hop each


# ---------------------------------------------------------------------- alpha-beta properties

_sizes = st.floats(min_value=1.0, max_value=2.0**36, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(PRESETS), kind=st.sampled_from(KINDS), a=_sizes, b=_sizes, frac=st.floats(0.0, 1.0))
def test_time_monotone_in_nbytes(name, kind, a, b, frac):
    s = load_system(name)
    n = 2 + int(frac * (s.n_devices - 2))
    lo, hi = sorted((a, b))
    assert collective_time(s, kind, lo, n).time_s <= collective_time(s, kind, hi, n).time_s


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(PRESETS), kind=st.sampled_from(KINDS), size=_sizes, frac=st.floats(0.0, 1.0),
       algo=st.sampled_from((None, *ALGORITHMS)))
def test_time_at_least_the_bandwidth_bound(name, kind, size, frac, algo):
    s = load_system(name)
    n = 2 + int(frac * (s.devices_per_node - 2))
    if not _supported(s, kind, algo, n):
        return
    c = collective_time(s, kind, size, n, algo)
    # a switch that reduces halves the all-reduce bound: each rank's (n-1)/n S goes up once and comes down once
    factor = bus_factor(kind, n) / (2.0 if kind == "all_reduce" and s.in_switch_reduction else 1.0)
    assert c.time_s >= size * factor / _injection_bw(s) * (1 - 1e-12)


def _group_sizes(s: System) -> list[int]:
    """Rank counts to compare: every count on a switch, fully connected, ring or PCIe fabric; on a
    torus or mesh the blocks (a partial block borrows its enclosing block's idle devices as relays,
    and a power of two halves and doubles more cheaply than its neighbours: docs/systems.md)."""
    if not s.dims:
        return list(range(1, s.n_devices + 1))
    sizes = {1}
    base = 1
    for d in s.dims:
        sizes |= {base * k for k in range(2, d + 1)}
        base *= d
    return sorted(sizes | {s.devices_per_node * k for k in range(1, s.nodes + 1)})


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from((*PRESETS, "dgx-h100x2")), shard=st.floats(1.0, 2.0**28), frac=st.floats(0.0, 1.0))
def test_more_ranks_never_cheaper_for_all_gather(name, shard, frac):
    """Each rank contributes ``shard`` bytes: adding ranks never shortens the all-gather."""
    s = _multi("dgx-h100", 2) if name == "dgx-h100x2" else load_system(name)
    sizes = _group_sizes(s)
    i = min(int(frac * (len(sizes) - 1)), len(sizes) - 2)
    r0, r1 = sizes[i], sizes[i + 1]
    t0 = collective_time(s, "all_gather", shard * r0, r0).time_s
    t1 = collective_time(s, "all_gather", shard * r1, r1).time_s
    assert t1 >= t0 * (1 - 1e-12)


def test_more_ranks_never_cheaper_for_all_gather_exhaustive():
    for name in (*PRESETS, "dgx-h100x2"):
        s = _multi("dgx-h100", 2) if name == "dgx-h100x2" else load_system(name)
        for shard in (1.0, 4096.0, 2.0**20, 2.0**30):
            times = [collective_time(s, "all_gather", shard * r, r).time_s for r in _group_sizes(s)]
            assert all(b >= a * (1 - 1e-12) for a, b in zip(times, times[1:], strict=False)), (name, shard, times)


# ------------------------------------------------------------------------------ bad input


def _one_line_error(exc_info) -> None:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg


@pytest.mark.parametrize("nbytes", [0, -1, float("nan"), float("inf"), True, "1 MB", None])
def test_bad_nbytes(nbytes):
    with pytest.raises(SpecError) as e:
        collective_time(load_system("dgx-a100"), "all_reduce", nbytes, 8)
    _one_line_error(e)


@pytest.mark.parametrize("ranks", [0, -3, 9, 1.5, True, float("nan"), None])
def test_bad_ranks(ranks):
    with pytest.raises(SpecError) as e:
        collective_time(load_system("dgx-a100"), "all_reduce", 1024, ranks)
    _one_line_error(e)


@pytest.mark.parametrize("kind, algo", [("allreduce", None), ("all_reduce", "butterfly"), ("all_gather", "tree"),
                                        ("send_recv", "ring"), ("all_reduce", "hierarchical")])
def test_bad_kind_or_algorithm(kind, algo):
    with pytest.raises(SpecError) as e:
        collective_time(load_system("dgx-a100"), kind, 1024, 8, algo)
    _one_line_error(e)


def test_unknown_preset_and_missing_file():
    with pytest.raises(PresetNotFound) as e:
        load_system("dgx-z100")
    assert isinstance(e.value, XpusimError) and "dgx-a100" in str(e.value)
    _one_line_error(e)
    with pytest.raises(SpecError):
        load_system("no/such/system.yaml")


GOOD = {"name": "x", "device": "a100-80gb", "devices_per_node": 4,
        "intra": {"topology": "switch", "bandwidth": "100 GB/s", "latency": "1 us"}}
_SIMPLE = {"base_latency": "10 us", "efficiency": 0.8}


@pytest.mark.parametrize("patch", [
    {"intra": None},
    {"intra": {"topology": "hypercube", "bandwidth": "1 GB/s", "latency": "1 us"}},
    {"intra": {"topology": "switch", "latency": "1 us"}},
    {"intra": {"topology": "switch", "bandwidth": "fast", "latency": "1 us"}},
    {"intra": {"topology": "switch", "bandwidth": "0 GB/s", "latency": "1 us"}},
    {"intra": {"topology": "switch", "bandwidth": "1 GB/s", "latency": "-1 us"}},
    {"intra": {"topology": "torus", "dims": [2, 3], "bandwidth": "1 GB/s", "latency": "1 us"}},
    {"intra": {"topology": "torus", "bandwidth": "1 GB/s", "latency": "1 us"}},
    {"intra": {"topology": "switch", "dims": [4], "bandwidth": "1 GB/s", "latency": "1 us"}},
    {"intra": {"topology": "switch", "bandwidth": "1 GB/s", "latency": "1 us", "colour": "red"}},
    {"intra": {"topology": "switch", "bandwidth": "1 GB/s", "latency": "1 us", "energy_per_byte": -2}},
    {"nodes": 2},
    {"nodes": 0},
    {"devices_per_node": 2.5},
    {"device": "no-such-device"},
    {"device": 7},
    {"inter": {"bandwidth": "25 GB/s", "latency": "2 us"}},
    {"algorithms": ["ring", "magic"]},
    {"algorithms": {"all_gather": ["tree"]}},
    {"algorithms": {"broadcast": ["ring"]}},
    {"rules": {"protocols": {"simple": {"efficiency": 1.5}}}},
    {"rules": {"protocols": {"jumbo": {}}}},
    {"rules": {"protocols": {"ll": {}, "ll128": {}}}},
    {"rules": {"protocols": {"simple": _SIMPLE, "ll128": {"base_latency": "3 us", "efficiency": 0}}}},
    {"rules": {"protocols": {"simple": _SIMPLE, "ll128": {"base_latency": "-3 us", "efficiency": 0.5}}}},
    {"rules": {"protocols": {"simple": _SIMPLE, "ll128": {"latency": "3 us", "efficiency": 0.5}}}},
    {"rules": {"protocols": {"simple": _SIMPLE, "ll128": {"base_latency": "3 us"}}}},      # no efficiency
    {"rules": {"protocols": {"simple": _SIMPLE, "ll128": {"efficiency": 0.5}}}},           # no base latency
    {"rules": {"protocols": {"simple": _SIMPLE, "ll": {"base_latency": "1 us", "efficiency": 0.9}}}},  # beats simple
    {"rules": {"protocols": {}}},
    {"rules": {"fitted_by": "me"}},                                                         # no protocols
    {"intra": {"topology": "switch", "bandwidth": "1 GB/s", "latency": "1 us", "energy_per_byte": "-5 pJ"}},
    {"algorithms": ["tree"]},                      # a plain list leaving all_gather etc. without an algorithm
    {"algorithms": {"all_gather": ["tree", "ring"]}},  # tree does not implement all_gather
    {"intra": {"topology": "ring", "bandwidth": "1 GB/s", "latency": "1 us", "in_switch_reduction": True}},
    {"intra": {"topology": "switch", "bandwidth": "1 GB/s", "latency": "1 us", "in_switch_reduction": "yes"}},
    {"algorithms": {"all_reduce": ["ring", "nvls"]}},
    {"algorithms": {"all_to_all": ["nvls"]}},
    {"speed": 3},
])
def test_bad_system_yaml_is_one_line_spec_error(patch):
    d = {**GOOD, **patch}
    d = {k: v for k, v in d.items() if v is not None}
    with pytest.raises(XpusimError) as e:
        system_from_dict(d, "x")
    _one_line_error(e)


def test_malformed_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(SpecError) as e:
        load_system(p)
    _one_line_error(e)


def test_link_and_system_validate_directly():
    with pytest.raises(SpecError):
        Link(bandwidth_Bps=0.0, latency_s=1e-6)
    s = load_system("dgx-a100")
    with pytest.raises(SpecError):
        dataclasses.replace(s, intra_topology="star")
    with pytest.raises(SpecError):
        dataclasses.replace(s, nodes=2, inter=None)
    for bad in ({"in_switch_reduction": 1}, {"in_switch_reduction": True, "intra_topology": "ring"}):
        with pytest.raises(SpecError) as e:
            dataclasses.replace(s, **bad)
        _one_line_error(e)


def test_in_switch_reduction_yaml_and_rules_subset():
    """A user switch with in-switch reduction gets NVLS; rules that list only some protocols use only those."""
    d = {**GOOD, "intra": {**GOOD["intra"], "in_switch_reduction": True},
         "algorithms": {"all_reduce": ["ring", "nvls"]},
         "rules": {"protocols": {"simple": {"base_latency": "10 us", "efficiency": 0.8}}}}
    s = system_from_dict(d, "x")
    assert s.in_switch_reduction and system_rules(s).names() == ("simple",)
    c = collective_time(s, "all_reduce", GiB, 4)
    assert c.algorithm == "nvls" and c.protocol == "simple"
    assert collective_time(s, "all_reduce", 8, 4).protocol == "simple"


def test_negative_energy_string_names_the_system_and_field():
    d = {**GOOD, "intra": {**GOOD["intra"], "energy_per_byte": "-5 pJ"}}
    with pytest.raises(SpecError, match=r"^system 'x'\.intra\.energy_per_byte: must be >= 0 pJ per byte, got '-5 pJ'$"):
        system_from_dict(d, "x")


def test_rules_need_every_protocol_constant():
    """A rules block is taken whole: each protocol with both constants, none more efficient than simple."""
    for rules, match in (({"fitted_by": "me"}, "protocols: missing"),
                         ({"protocols": {"simple": _SIMPLE, "ll128": {"base_latency": "5 us"}}}, "base_latency and efficiency"),
                         ({"protocols": {"simple": _SIMPLE, "ll": {"base_latency": "0 us", "efficiency": 0.9}}},
                          "ll.efficiency: 0.9 exceeds simple's 0.8")):
        with pytest.raises(SpecError, match=match):
            system_from_dict({**GOOD, "rules": rules}, "x")


def test_plain_algorithm_list_applies_to_each_collective_it_can():
    s = system_from_dict({**GOOD, "algorithms": ["ring", "tree"]}, "x")
    assert s.meta["algorithms"] == {"all_reduce": ("ring", "tree"), "all_gather": ("ring",), "reduce_scatter": ("ring",),
                                    "all_to_all": ("ring",), "send_recv": ("direct",)}
    assert collective_time(s, "all_gather", GiB, 4).algorithm == "ring"
    assert collective_time(s, "send_recv", GiB, 4).algorithm == "direct"


def test_listed_algorithms_are_never_widened():
    """A list that cannot run at a rank count is an error, not a silent fallback to unlisted algorithms."""
    s = system_from_dict({**GOOD, "algorithms": {"all_reduce": ["hierarchical"]}}, "x")
    with pytest.raises(SpecError, match="lists only hierarchical for all_reduce, which cannot run on 4 ranks inside one node"):
        collective_time(s, "all_reduce", 2**20, 4)
    two = dataclasses.replace(load_system("dgx-h100"), nodes=2, meta={**load_system("dgx-h100").meta,
                                                                       "algorithms": {"all_reduce": ("nvls",)}})
    assert collective_time(two, "all_reduce", GiB, 8).algorithm == "nvls"
    with pytest.raises(SpecError, match="lists only nvls for all_reduce, which cannot run on 16 ranks across nodes"):
        collective_time(two, "all_reduce", GiB, 16)


def _ideal(topology: str, dims: list[int]) -> System:
    """A torus or mesh with the ideal rules (no base latency, full efficiency) and 1 us hops."""
    return system_from_dict({"name": topology, "device": "a100-80gb", "devices_per_node": math.prod(dims),
                             "intra": {"topology": topology, "dims": dims, "bandwidth": "100 GB/s", "latency": "1 us"},
                             "rules": {"protocols": {"simple": {"base_latency": "0 us", "efficiency": 1.0}}}}, topology)


@pytest.mark.parametrize("topology, dims, steps", [("torus", [4, 4], 2 * (3 + 3)), ("mesh", [2, 2, 2], 2 * (1 + 1 + 1)),
                                                   ("torus", [4, 4, 4], 2 * (3 + 3 + 3))])
def test_ring_steps_on_a_torus_or_mesh_are_the_sum_over_dimensions(topology, dims, steps):
    """Rings run in every dimension at once: 2 sum_i (s_i - 1) hops per all-reduce, not 2 (n - 1)."""
    s = _ideal(topology, dims)
    n = s.devices_per_node
    ring_bw = sum((2.0 if topology == "torus" and d >= 3 else 1.0) * 100e9 for d in dims)
    c = collective_time(s, "all_reduce", 64, n, "ring")
    assert c.time_s == pytest.approx(steps * 1e-6 + 2 * (n - 1) / n * 64 / ring_bw, rel=1e-9)
    a2a = collective_time(s, "all_to_all", 64, n, "ring")
    assert a2a.time_s == pytest.approx(steps / 2 * 1e-6 + 64 / n * n * (n - 1) / 2 / ring_bw, rel=1e-9)


def test_tpu_slice_ring_wins_at_16_kib():
    """2x2x2 mesh: the ring's 6 hops beat halving/doubling for a 16 KiB all-reduce."""
    assert collective_time("tpu-v4-slice-8", "all_reduce", 2**14, 8).algorithm == "ring"


def test_send_recv_across_nodes_energy():
    """16 ranks on two DGX A100s: each sends S to the next, 14 NVLink hops and 2 NIC hops."""
    S = 2**26
    c = collective_time(_multi("dgx-a100", 2), "send_recv", S, 16)
    assert c.energy_j == pytest.approx((14 * 88 + 2 * 176) * 1e-12 * S)
    assert collective_time("dgx-a100", "send_recv", S, 2).energy_j == pytest.approx(2 * 88e-12 * S)  # both ranks send


def test_one_way_sends_take_the_nic_when_they_leave_the_node():
    from xpusim.sim.collectives import send_time

    s, S = _multi("dgx-a100", 2), 64 * 2**20
    simple = system_rules(s).protocol("simple")
    across = send_time(s, S, 8, 8)   # devices 0-7 send to 8-15: one NIC each
    assert across.time_s == pytest.approx(simple.base_latency_s + 2.7e-6 + S / (0.96 * 25e9))
    assert across.energy_j == pytest.approx(8 * S * 176e-12)
    inside = send_time(s, S, 4, 4)   # devices 0-3 send to 4-7 over NVLink
    assert inside.time_s == pytest.approx(simple.base_latency_s + 0.47e-6 + S / (simple.efficiency * 300e9))
    assert inside.energy_j == pytest.approx(4 * S * 88e-12)   # one way: S per sender
    assert send_time(s, S, 4, 4, first=4).time_s == across.time_s  # devices 4-7 send to 8-11
    shared = dataclasses.replace(s, nics_per_node=2)               # 8 sends share 2 NICs
    assert send_time(shared, S, 8, 8).time_s == pytest.approx(simple.base_latency_s + 2.7e-6 + 4 * S / (0.96 * 25e9))
    with pytest.raises(SpecError, match="need devices 0 .. 31"):
        send_time(s, S, 16, 16)
