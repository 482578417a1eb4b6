"""Area, power and cost model (arch/area.py): the published die areas it predicts, the laws its
formulas must obey, and the errors bad inputs raise. Sources and numbers: docs/area-power-cost.md."""

import copy
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xpusim.arch import arch_from_dict, area, list_archs, load_arch
from xpusim.errors import SpecError, XpusimError
from xpusim.validation import fit_area

NPU = {
    "name": "npu", "class": "systolic", "clock": "1 GHz", "technology_nm": 7,
    "matrix": {"instances": 4, "array": [64, 64], "dataflow": "ws", "macs_per_cycle": {"bf16": 4096, "int8": 4096}},
    "vector": {"instances": 1, "flops_per_cycle": {"fp32": 256}},
    "memory": [
        {"name": "dram", "kind": "hbm2e", "capacity": "16 GiB", "bandwidth": "400 GB/s"},
        {"name": "buf", "kind": "sram", "capacity": "8 MiB", "bandwidth": "2 TB/s", "multicast": True},
    ],
}


def npu(**changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = copy.deepcopy(NPU)
    for path, value in changes.items():
        node: Any = d
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        node[keys[-1]] = value
    return d


# --- validation against published die areas -------------------------------------------------------


def test_a100_modelled_die_area_within_10_percent_of_826():
    """GA100 (826 mm^2, A100 whitepaper) predicted with the overhead fitted on the H100 only."""
    a100 = load_arch("a100-80gb")
    modelled = area.die_area_mm2(a100)
    assert abs(modelled / 826 - 1) < 0.10, modelled
    assert a100.meta["die_area_mm2"] == 826


def test_overhead_constant_is_the_h100_fit_not_an_a100_one():
    """The one calibrated constant is what validation/fit_area.py solves on the H100 (814 mm^2)."""
    assert fit_area.FIT_ON == ("h100-sxm", 814.0)
    assert fit_area.fit() == pytest.approx(area.CORE_OVERHEAD_MM2_45, abs=0.006)
    assert area.die_area_mm2(load_arch("h100-sxm")) == pytest.approx(814, rel=1e-4)


@pytest.mark.parametrize("name", ["l40s", "rtx-4090"])
def test_ad102_predicted_within_10_percent_of_608_5(name):
    """AD102 (608.5 mm^2, Ada whitepaper) is on the fit chip's node family (TSMC 4N); modelled +4.6 to +6.8 %."""
    assert abs(area.die_area_mm2(load_arch(name)) / 608.5 - 1) < 0.10


def test_presets_on_one_die_model_the_same_area():
    """Variants of one die (enabled units differ) get the physical die's area."""
    for group in (("a100-80gb", "a100-40gb"), ("h100-sxm", "h100-pcie", "h200"), ("l40s", "rtx-4090")):
        areas = [area.die_area_mm2(load_arch(n)) for n in group]
        assert max(areas) - min(areas) < 40, (group, areas)  # only the matrix lanes of the product differ


def test_a100_breakdown_has_every_component_and_sums():
    b = area.area_breakdown(load_arch("a100-80gb"))
    assert set(b) == {"matrix", "vector", "sram:l2", "sram:smem", "regfile:rf", "dram_phy", "noc", "io", "other"}
    assert all(v > 0 for v in b.values())
    # components from their own sources: the fitted per-core control logic and the L2's SRAM
    from xpusim.arch.area import CORE_OVERHEAD_MM2_45, area_factor, sram_mm2_per_byte

    assert b["other"] == pytest.approx(128 * CORE_OVERHEAD_MM2_45 * area_factor(7))
    assert b["sram:l2"] == pytest.approx(48 * 2**20 * sram_mm2_per_byte(7))
    # the physical die: 128 SMs, 48 MiB L2, 6 HBM stacks (the product enables 108, 40 MiB, 5)
    phys = area.physical(load_arch("a100-80gb"))
    assert phys["cores"] == 128 and [n for k, n, _ in phys["dram"]] == [6]
    assert dict((name, cap) for name, _, cap, _ in phys["levels"])["l2"] == 48 * 2**20


OUTSIDE = ("wafer", "pim", "dataflow", "fpga")  # classes the die model refuses (tested below)


@pytest.mark.parametrize("name", [n for n in list_archs() if load_arch(n).device_class not in OUTSIDE])
def test_every_preset_has_finite_positive_area_power_and_cost(name):
    arch = load_arch(name)
    a = area.die_area_mm2(arch)
    assert 1 < a < 5000
    assert 0 < area.leakage_power_w(arch) < 100
    assert 0 < area.peak_dynamic_power_w(arch) < 5000
    assert 0 < area.die_cost_usd(arch) < area.device_cost_usd(arch) < 20000


def test_node_between_table_nodes_is_interpolated():
    at = {n: area.die_area_mm2(arch_from_dict(npu(technology_nm=n))) for n in (7, 6, 5)}
    assert at[5] < at[6] < at[7]
    frac = math.log(7 / 6) / math.log(7 / 5)  # log-log, as arch/tech.py interpolates
    assert area.area_factor(6) == pytest.approx(area.area_factor(7) ** (1 - frac) * area.area_factor(5) ** frac)


# --- laws of the formulas ---------------------------------------------------------------------------


def test_dies_per_wafer_formula():
    # 100 mm^2 on 300 mm: pi*150^2/100 - pi*300/sqrt(200) = 706.9 - 66.6
    assert area.dies_per_wafer(100) == 640
    assert area.dies_per_wafer(100, wafer_mm=200) == math.floor(math.pi * 100**2 / 100 - math.pi * 200 / math.sqrt(200))
    assert area.dies_per_wafer(80000) == 0


@given(st.floats(1, 3000), st.floats(1.01, 3))
def test_dies_per_wafer_fall_with_area_and_fit_the_wafer(a, ratio):
    n = area.dies_per_wafer(a)
    assert n * a <= math.pi * 150**2
    assert area.dies_per_wafer(a * ratio) <= n


@given(st.floats(0.01, 5000), st.sampled_from([4, 5, 6, 7, 10, 12, 16, 28, 40]))
def test_yield_is_a_fraction_that_falls_with_area(a, node):
    y = area.die_yield(a, node)
    assert 0 < y <= 1
    assert area.die_yield(a * 1.5, node) < y


def test_yield_is_negative_binomial_with_the_node_defect_density():
    # N7: D0 = 0.09 / cm^2, alpha = 3 -> 826 mm^2: (1 + 8.26 * 0.09 / 3) ** -3
    assert area.die_yield(826, 7) == pytest.approx((1 + 8.26 * 0.09 / 3) ** -3)
    assert area.die_yield(1e-6, 7) == pytest.approx(1)
    assert area.die_yield(400, 16) < area.die_yield(400, 28)  # 0.10 vs 0.05 defects / cm^2


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["matrix__instances", "vector__instances", "memory__1__capacity", "matrix__macs_per_cycle__bf16"]),
       st.integers(2, 8), st.sampled_from([4, 7, 12, 28]))
def test_more_macs_or_sram_means_more_area_and_leakage(field, factor, node):
    base = npu(technology_nm=node)
    bigger = copy.deepcopy(base)
    if field == "memory__1__capacity":
        bigger["memory"][1]["capacity"] = f"{8 * factor} MiB"
    elif field == "matrix__macs_per_cycle__bf16":
        bigger["matrix"]["macs_per_cycle"]["bf16"] = 4096 * factor
    else:
        unit = field.split("__")[0]
        bigger[unit]["instances"] = base[unit]["instances"] * factor
    small, large = arch_from_dict(base), arch_from_dict(bigger)
    assert area.die_area_mm2(large) > area.die_area_mm2(small)
    assert area.leakage_power_w(large) > area.leakage_power_w(small)
    assert area.peak_dynamic_power_w(large) >= area.peak_dynamic_power_w(small)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.sampled_from([5, 7, 16, 28]))
def test_die_cost_grows_faster_than_area(factor, node):
    """Yield falls and edge loss grows with area, so cost per mm^2 of silicon rises with the die."""
    small = arch_from_dict(npu(technology_nm=node))
    large = arch_from_dict(npu(technology_nm=node, memory__1__capacity=f"{8 * factor} MiB", matrix__instances=4 * factor))
    a_small, a_large = area.die_area_mm2(small), area.die_area_mm2(large)
    assert a_large > 1.2 * a_small
    assert area.die_cost_usd(large) / a_large > area.die_cost_usd(small) / a_small


def test_die_section_spares_follow_a_variant():
    """A design-space variant with more SMs keeps the preset's spare fraction (128 of 108)."""
    a100 = load_arch("a100-80gb")
    more = replace(a100, matrix=replace(a100.matrix, instances=120), vector=replace(a100.vector, instances=120))
    assert area.physical(more)["cores"] == round(120 * 128 / 108)
    assert area.die_area_mm2(more) > area.die_area_mm2(a100)


def test_die_section_below_the_enabled_units_means_no_spares():
    """A search that raises the enabled count past the die section's gets a die of exactly what it enables."""
    d = npu(die={"matrix_instances": 2, "memory": {"buf": {"capacity": "1 MiB"}}})
    assert area.area_breakdown(arch_from_dict(d)) == area.area_breakdown(arch_from_dict(npu()))


def test_peak_dynamic_power_is_the_formula():
    arch = arch_from_dict(npu(**{"class": "generic"},
                              matrix={"instances": 2, "macs_per_cycle": {"int8": 100}, "energy_pj_per_mac": {"int8": 0.5}},
                              vector={"instances": 1, "flops_per_cycle": {"fp32": 10}, "energy_pj_per_flop": {"fp32": 2.0}},
                              memory=[{"name": "dram", "kind": "ddr4", "capacity": "1 GiB", "bandwidth": "10 GB/s",
                                       "read_energy_pj_per_byte": 100, "write_energy_pj_per_byte": 60}]))
    expected = (100 * 2 * 0.5 + 10 * 2.0) * 1e9 * 1e-12 + 10e9 * 80 * 1e-12
    assert area.peak_dynamic_power_w(arch) == pytest.approx(expected)


def test_device_cost_adds_dram_by_kind_and_package():
    hbm = arch_from_dict(npu())
    ddr = arch_from_dict(npu(memory__0__kind="ddr4", memory__0__bandwidth="25.6 GB/s"))
    assert area.device_cost_usd(hbm) == pytest.approx(area.die_cost_usd(hbm) + 16 * 7.0 + 750)
    assert area.device_cost_usd(ddr) == pytest.approx(area.die_cost_usd(ddr) + 16 * 2.4 + 21)
    assert area.area_breakdown(hbm)["dram_phy"] > area.area_breakdown(ddr)["dram_phy"]


def test_dram_interfaces_follow_bandwidth_without_a_die_section():
    one = area.physical(arch_from_dict(npu(memory__0__bandwidth="400 GB/s")))["dram"]
    two = area.physical(arch_from_dict(npu(memory__0__bandwidth="800 GB/s")))["dram"]
    assert one[0][1] == 1 and two[0][1] == 2  # HBM2e stack: 3.6 Gb/s x 1024 pins = 460.8 GB/s


def test_chiplets_split_the_die_for_yield():
    mono = arch_from_dict(npu(matrix__instances=64))
    split = arch_from_dict(npu(matrix__instances=64, die={"chiplets": 4}))
    assert area.die_area_mm2(split) == pytest.approx(area.die_area_mm2(mono))
    assert area.die_cost_usd(split) < area.die_cost_usd(mono)


# --- bad inputs -----------------------------------------------------------------------------------


def test_missing_technology_node_says_to_set_it():
    d = npu()
    del d["technology_nm"]
    arch = arch_from_dict(d)
    for fn in (area.die_area_mm2, area.area_breakdown, area.leakage_power_w, area.die_cost_usd, area.device_cost_usd):
        with pytest.raises(SpecError, match="technology_nm") as e:
            fn(arch)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("node", [3, 2, 65, 90])
def test_node_outside_the_table_raises(node):
    arch = replace(arch_from_dict(npu()), meta={"technology_nm": node})
    with pytest.raises(SpecError, match="outside"):
        area.die_area_mm2(arch)
    with pytest.raises(SpecError, match="outside"):
        area.die_yield(100, node)


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), "100", True, None])
def test_bad_areas_raise(bad):
    with pytest.raises(SpecError):
        area.die_yield(bad, 7)
    with pytest.raises(SpecError):
        area.dies_per_wafer(bad)


def test_bad_wafer_raises():
    with pytest.raises(SpecError):
        area.dies_per_wafer(100, wafer_mm=0)


@pytest.mark.parametrize("die, match", [
    ({"cores": 5}, "unknown field"),
    ({"matrix_instances": 2.5}, "positive integer"),
    ({"memory": {"nope": {"capacity": "1 MiB"}}}, "no memory level"),
    ({"memory": {"buf": {"banks": 2}}}, "capacity and/or instances"),
    ({"io": {"usb": 4}}, "I/O kinds"),
    ({"chiplets": 0}, "positive integer"),
    ([1, 2], "mapping"),
])
def test_bad_die_section_raises_at_load(die, match):
    with pytest.raises(SpecError, match=match):
        arch_from_dict(npu(die=die))


def test_unknown_memory_kind_raises_one_line():
    d = npu()
    del d["technology_nm"]
    d["memory"][1]["kind"] = "mram"
    arch = arch_from_dict(d)
    arch = replace(arch, meta={**arch.meta, "technology_nm": 7})
    with pytest.raises(XpusimError, match="unknown memory kind"):
        area.die_area_mm2(arch)


def test_unknown_compute_class_has_no_area():
    d = npu(matrix={"instances": 1, "macs_per_cycle": {"fp64": 8}}, **{"class": "generic"})
    del d["technology_nm"]
    arch = replace(arch_from_dict(d), meta={"technology_nm": 7})
    with pytest.raises(SpecError, match="no MAC area"):
        area.die_area_mm2(arch)


def test_wafer_scale_devices_are_refused_by_the_die_model():
    with pytest.raises(SpecError, match="wafer-scale"):
        area.die_area_mm2(load_arch("wse-3"))


@pytest.mark.parametrize("name, what", [("hbm2-pim", "PIM device"), ("neupims-pim", "PIM device"),
                                        ("duplex-logic-pim", "PIM device"), ("sn40l", "dataflow"),
                                        ("alveo-u280", "FPGA")])
def test_pim_and_dataflow_devices_are_refused_by_the_logic_die_model(name, what):
    with pytest.raises(SpecError, match=what) as e:
        area.die_area_mm2(load_arch(name))
    assert "\n" not in str(e.value)


def test_a_design_space_trial_keeps_the_base_devices_spare_fractions():
    """The explorer rebuilds each trial from YAML: its die section must refer to the base device's
    enabled counts, so fewer SMs mean a smaller die and more HBM bandwidth more stacks."""
    from xpusim.explore.evaluate import build_device
    from xpusim.explore.space import load_space

    sp = load_space("gpu-chip")
    base = {"sms": 132, "clock_ghz": 1.8, "l2_mib": 50, "hbm_tbs": 3.35, "weights": "bf16"}

    def phys(**over):
        a = build_device(sp, {**base, **over})
        return area.die_area_mm2(a), area.physical(a)

    (a66, p66), (a132, p132), (a198, p198) = phys(sms=66), phys(), phys(sms=198)
    assert a66 < a132 < a198 and p66["cores"] < p132["cores"] < p198["cores"]
    assert p132["cores"] == round(132 * 144 / 132) and p198["cores"] == round(198 * 144 / 132)
    assert phys(l2_mib=25)[0] < a132
    stacks = [phys(hbm_tbs=t)[1]["dram"][0][1] for t in (2.0, 3.35, 6.0)]
    assert stacks[0] < stacks[1] < stacks[2]


def test_fp32_gemms_on_cuda_cores_add_no_tensor_core_silicon():
    """A GPU's fp32 matrix rate is its CUDA cores' (no faster than the vector unit's FMAs): the
    matrix area is the tensor cores' whatever that rate is."""
    import copy

    from xpusim.arch.loader import arch_dict

    d, _ = arch_dict("rtx-4090")
    base = area.area_breakdown(arch_from_dict(copy.deepcopy(d), "a"))["matrix"]
    d["matrix"]["macs_per_cycle"]["fp32"] = 128
    assert area.area_breakdown(arch_from_dict(copy.deepcopy(d), "b"))["matrix"] == base
    d["matrix"]["macs_per_cycle"]["fp32"] = 4096  # faster than the CUDA cores: fp32 tensor cores of its own
    assert area.area_breakdown(arch_from_dict(d, "c"))["matrix"] > base


# --- energies the technology table fills --------------------------------------------------------------


def test_levels_without_kind_take_the_area_models_kinds_energies():
    """A level without ``kind`` is costed as the area model counts it: DDR4 outermost, SRAM inside."""
    from xpusim.arch import tech

    d = npu()
    for lv in d["memory"]:
        del lv["kind"]
    arch = arch_from_dict(d)
    dram, buf = arch.memory
    assert dram.read_energy_pj_per_byte == dram.write_energy_pj_per_byte == tech.dram_energy_pj_per_byte("ddr4")
    assert buf.read_energy_pj_per_byte == pytest.approx(tech.sram_energy_pj_per_byte(8 * 2**20, 7))
    assert [area._kind(arch, i) for i in range(2)] == ["ddr4", "sram"]


def test_a_partial_mac_table_is_completed_from_the_technology_table():
    from xpusim.arch import tech

    arch = arch_from_dict(npu(matrix__energy_pj_per_mac={"bf16": 0.5}))
    assert arch.matrix.energy("bf16") == 0.5  # stated, kept
    assert arch.matrix.energy("int8") == pytest.approx(tech.mac_energy_pj("int8", 7))
    assert arch.matrix.energy("int8") > 0
    d = npu(matrix__energy_pj_per_mac={"bf16": 0.5})
    del d["technology_nm"]
    with pytest.raises(SpecError, match=r"energy_pj_per_mac gives no energy for int8.*technology_nm"):
        arch_from_dict(d)


def test_one_of_read_or_write_energy_stands_for_both():
    for field in ("read_energy_pj_per_byte", "write_energy_pj_per_byte"):
        arch = arch_from_dict(npu(**{f"memory__0__{field}": 30.0}))
        assert arch.memory[0].read_energy_pj_per_byte == arch.memory[0].write_energy_pj_per_byte == 30.0
    arch = arch_from_dict(npu(memory__0__read_energy_pj_per_byte=30.0, memory__0__energy_pj_per_byte=10.0))
    assert (arch.memory[0].read_energy_pj_per_byte, arch.memory[0].write_energy_pj_per_byte) == (30.0, 10.0)


def test_ddr4_ddr5_lpddr5_energies_scale_their_sources_by_the_supply_voltage_squared():
    from xpusim.arch import tech

    v = tech.DRAM_SUPPLY_V
    assert tech.DRAM_PJ_PER_BIT["ddr4"] == pytest.approx(tech.DDR3_PJ_PER_BIT * (v["ddr4"] / v["ddr3"]) ** 2)
    assert tech.DRAM_PJ_PER_BIT["ddr5"] == pytest.approx(tech.DDR3_PJ_PER_BIT * (v["ddr5"] / v["ddr3"]) ** 2)
    assert tech.DRAM_PJ_PER_BIT["lpddr5"] == pytest.approx(tech.DRAM_PJ_PER_BIT["lpddr4"] * (v["lpddr5"] / v["lpddr4"]) ** 2)
    assert tech.DRAM_PJ_PER_BIT["ddr5"] < tech.DRAM_PJ_PER_BIT["ddr4"] < tech.DDR3_PJ_PER_BIT


@pytest.mark.parametrize("change, match", [
    ({"matrix_instances": 0}, "ref.matrix_instances: must be a positive integer"),
    ({"matrix_instances": "abc"}, "ref.matrix_instances: must be a positive integer"),
    ({"dram_bandwidth": -1.0}, "ref.dram_bandwidth: must be a non-negative number"),
    ({"memory": {"buf": {"capacity": 0, "instances": 1}}}, r"ref.memory.buf.capacity: must be a positive number"),
    ({"memory": {"buf": {"capacity": 1024}}}, r"ref.memory.buf: must give capacity"),
])
def test_bad_die_reference_is_refused_at_load(change, match):
    """A ``die.ref`` (written by the explorer, or carried by an exported YAML) is checked like the die."""
    ref = {"matrix_instances": 4, "vector_instances": 1, "memory": {"buf": {"capacity": 8 * 2**20, "instances": 1}},
           "dram_bandwidth": 400e9, **change}
    with pytest.raises(SpecError, match=match):
        arch_from_dict(npu(die={"matrix_instances": 8, "memory": {"buf": {"capacity": "16 MiB"}}, "ref": ref}))
    good = {"matrix_instances": 4, "vector_instances": 1, "memory": {"buf": {"capacity": 8 * 2**20, "instances": 1}},
            "dram_bandwidth": 400e9}
    assert arch_from_dict(npu(die={"matrix_instances": 8, "memory": {"buf": {"capacity": "16 MiB"}}, "ref": good}))


def test_a_partial_flop_table_is_completed_from_the_technology_table():
    d = copy.deepcopy(NPU)
    d["vector"] = {"instances": 1, "flops_per_cycle": {"fp32": 256, "bf16": 512}, "energy_pj_per_flop": {"fp32": 0.3}}
    arch = arch_from_dict(d)
    assert arch.vector.energy("fp32") == 0.3  # stated, kept
    # half a bf16 FMA at 7 nm: 0.5 x (1.1 pJ x (8/11)^2 + 0.9 pJ) x 0.080 (Horowitz 45 nm, Stillmaker-Baas 7 nm)
    assert arch.vector.energy("bf16") == pytest.approx(0.5 * (1.1 * (8 / 11) ** 2 + 0.9) * 0.080)  # 0.05927 pJ


def test_a_partial_flop_table_without_technology_nm_is_refused():
    d = copy.deepcopy(NPU)
    del d["technology_nm"]
    d["matrix"]["energy_pj_per_mac"] = {"bf16": 0.5, "int8": 0.1}
    d["vector"] = {"instances": 1, "flops_per_cycle": {"fp32": 256, "bf16": 512}, "energy_pj_per_flop": {"fp32": 0.3}}
    with pytest.raises(SpecError, match=r"energy_pj_per_flop gives no energy for bf16.*technology_nm"):
        arch_from_dict(d)


def test_derived_dram_energies_are_the_jedec_voltage_scaled_numbers():
    from xpusim.arch import tech
    # 70 pJ/bit DDR3 at 1.5 V; DDR4 1.2 V, DDR5 1.1 V; LPDDR4 8 pJ/bit at VDD2 1.1 V, LPDDR5 VDD2 1.05 V
    assert tech.DRAM_PJ_PER_BIT["ddr4"] == pytest.approx(44.8)          # 70 x 0.64
    assert tech.DRAM_PJ_PER_BIT["ddr5"] == pytest.approx(37.6444, rel=1e-5)  # 70 x (1.1/1.5)^2
    assert tech.DRAM_PJ_PER_BIT["lpddr5"] == pytest.approx(7.28926, rel=1e-5)  # 8 x (1.05/1.1)^2
    assert tech.dram_energy_pj_per_byte("lpddr5") == pytest.approx(8 * 7.28926, rel=1e-5)


def test_a_bad_die_reference_vector_count_is_refused():
    ref = {"matrix_instances": 4, "vector_instances": 0, "memory": {"buf": {"capacity": 8 * 2**20, "instances": 1}},
           "dram_bandwidth": 400e9}
    d = copy.deepcopy(NPU)
    d["die"] = {"matrix_instances": 8, "memory": {"buf": {"capacity": "16 MiB"}}, "ref": ref}
    with pytest.raises(SpecError, match="ref.vector_instances: must be a positive integer"):
        arch_from_dict(d)
