"""Loading devices from YAML (presets in ``arch/presets/`` or user files)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..errors import PresetNotFound, SpecError
from ..files import load_yaml, read_text
from ..units import parse_quantity
from .spec import Arch, ComputeUnit, MemoryLevel

PRESETS_DIR = Path(__file__).parent / "presets"

_TOP = {"name", "class", "description", "clock", "matrix", "vector", "memory", "launch_overhead",
        "static_power", "tdp", "technology_nm", "sources", "notes", "die_area_mm2", "rules", "features", "die", "pim",
        "wafer", "rdu", "fpga", "formats"}
_LEVEL = {"name", "capacity", "bandwidth", "instances", "latency", "read_energy_pj_per_byte",
          "write_energy_pj_per_byte", "energy_pj_per_byte", "multicast", "double_buffer", "partitions", "kind",
          "serves"}
_UNIT = {"instances", "macs_per_cycle", "flops_per_cycle", "energy_pj_per_mac", "energy_pj_per_flop", "array",
         "dataflow", "clock", "accumulator_bits", "preload", "runs_as"}


#: class-specific hardware features a preset may declare, with their meaning
FEATURES = {
    "cluster_multicast": "CTAs of a thread-block cluster that share one L2 load of an operand tile (Hopper TMA multicast)",
    "stream_k": "1: the GEMM library also schedules stream-K (persistent CTAs sharing all tiles' K iterations)",
    "sparse_2_4": "1: sparse tensor cores run 2:4 sparse weights at twice the dense math rate",
}


#: keys of a preset's ``formats:`` (the formats its engine runs a model in) and the model fields they set
FORMAT_KEYS = {"weights": "weight_dtype", "activations": "act_dtype", "kv": "kv_dtype"}


def _formats(v: Any, name: str) -> dict[str, str]:
    """A preset's engine formats: ``{weights, activations, kv}`` -> format names (checked)."""
    from ..dtypes import get_dtype

    if not isinstance(v, dict) or not v or set(v) - set(FORMAT_KEYS):
        raise SpecError(f"device {name!r}: formats must map some of {', '.join(FORMAT_KEYS)} to formats, got {v!r}")
    out = {k: get_dtype(str(f)).name for k, f in v.items()}
    for k in ("activations", "kv"):
        if k in out and get_dtype(out[k]).sparse_m:
            raise SpecError(f"device {name!r}: formats.{k} {out[k]!r}: N:M sparsity applies to weights only")
    return out


def _features(v: Any, name: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise SpecError(f"device {name!r}: features must be a mapping")
    unknown = sorted(set(v) - set(FEATURES))
    if unknown:
        raise SpecError(f"device {name!r}: unknown feature(s) {unknown}; known: {', '.join(FEATURES)}")
    for k, x in v.items():
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            raise SpecError(f"device {name!r}: feature {k} must be a whole number >= 1, got {x!r}")
    return dict(v)


def _bad_rules(name: str) -> dict:
    raise SpecError(f"device {name!r}: rules must be a mapping of class-specific constants")


def list_archs() -> list[str]:
    """Names of the shipped device presets."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _check_keys(d: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown}; allowed: {', '.join(sorted(allowed))}")


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or int(v) != v or v <= 0:
        raise SpecError(f"{where}: must be a positive integer, got {v!r}")
    return int(v)


def _nonneg(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise SpecError(f"{where}: must be a number >= 0, got {v!r}")
    return float(v)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise SpecError(f"{where}: must be true or false, got {v!r}")
    return v


def _rates(d: Any, where: str) -> dict[str, float]:
    if not isinstance(d, dict) or not d:
        raise SpecError(f"{where}: must be a mapping of dtype to rate, e.g. {{bf16: 1024}}")
    out = {}
    for k, v in d.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not v > 0:
            raise SpecError(f"{where}.{k}: must be a positive number, got {v!r}")
        out[str(k)] = float(v)
    return out


def _unit(d: Any, kind: str, where: str) -> ComputeUnit:
    if not isinstance(d, dict):
        raise SpecError(f"{where}: must be a mapping")
    _check_keys(d, _UNIT, where)
    rate_key, e_key = ("macs_per_cycle", "energy_pj_per_mac") if kind == "matrix" else ("flops_per_cycle", "energy_pj_per_flop")
    if rate_key not in d:
        raise SpecError(f"{where}: missing {rate_key} (per-dtype rate per instance per cycle)")
    array = None
    if "array" in d:
        a = d["array"]
        if not isinstance(a, list | tuple) or len(a) != 2:
            raise SpecError(f"{where}.array: must be [rows, cols]")
        array = (_int(a[0], f"{where}.array rows"), _int(a[1], f"{where}.array cols"))
    energy = d.get(e_key, {})
    if not isinstance(energy, dict):
        raise SpecError(f"{where}.{e_key}: must be a mapping of dtype to pJ")
    energy = _rates(energy, f"{where}.{e_key}") if energy else {}
    if "dataflow" in d and d["dataflow"] not in ("ws", "os", "is"):
        raise SpecError(f"{where}.dataflow: must be ws, os or is, got {d['dataflow']!r}")
    preload = d.get("preload", False)
    if not isinstance(preload, bool) or (preload and "array" not in d):
        raise SpecError(f"{where}.preload: must be true or false, and applies to a systolic array (give array:)")
    rates = _rates(d[rate_key], f"{where}.{rate_key}")
    runs_as = d.get("runs_as", {})
    if not isinstance(runs_as, dict) or any(not isinstance(v, str) or v not in rates or k in rates
                                            for k, v in runs_as.items()):
        raise SpecError(f"{where}.runs_as: must map classes the unit has no rate for to classes it has, "
                        f"e.g. {{fp32: bf16}}; it has {', '.join(rates)}")
    return ComputeUnit(
        kind=kind,
        instances=_int(d.get("instances", 1), f"{where}.instances"),
        rate_per_cycle=rates,
        runs_as={str(k): str(v) for k, v in runs_as.items()},
        energy_pj=energy,
        array=array,
        dataflow=d.get("dataflow"),
        clock_hz=parse_quantity(d["clock"], "hz", f"{where}.clock") if "clock" in d else None,
        accumulator_bits=_int(d["accumulator_bits"], f"{where}.accumulator_bits") if "accumulator_bits" in d else None,
        preload=preload,
    )


def _bandwidth(v: Any, clock_hz: float, where: str) -> float:
    """Bytes/s of a level's ``bandwidth``: a rate (``'2 TB/s'``) or bytes per device-clock cycle
    (``'128 B/cycle'``, which follows the device's clock)."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(.*?B)/(?:cycle|clock)\s*", v)
        if m:
            return parse_quantity(m.group(1), "bytes", where) * clock_hz
    return parse_quantity(v, "bytes_per_s", where)


def _level(d: Any, i: int, dev: str, clock_hz: float = 0.0) -> MemoryLevel:
    where = f"device {dev!r} memory[{i}]"
    if not isinstance(d, dict):
        raise SpecError(f"{where}: must be a mapping with name, capacity, bandwidth")
    _check_keys(d, _LEVEL, where)
    for k in ("name", "capacity", "bandwidth"):
        if k not in d:
            raise SpecError(f"{where}: missing {k!r}")
    # one of read/write stated alone stands for both; energy_pj_per_byte is the default of each
    e = d.get("energy_pj_per_byte", d.get("read_energy_pj_per_byte", d.get("write_energy_pj_per_byte", 0.0)))
    e = _nonneg(e, f"{where}.energy_pj_per_byte")
    parts = d.get("partitions")
    if parts is not None:
        if not isinstance(parts, dict):
            raise SpecError(f"{where}.partitions: must map ifmap/filter/ofmap to capacities")
        parts = {str(k): parse_quantity(v, "bytes", f"{where}.partitions.{k}") for k, v in parts.items()}
    serves = d.get("serves")
    if serves is not None:
        if not isinstance(serves, list) or not all(isinstance(x, str) for x in serves):
            raise SpecError(f"{where}.serves: must be a list of operands among ifmap, filter, ofmap")
        serves = tuple(serves)
    return MemoryLevel(
        name=str(d["name"]),
        capacity_bytes=parse_quantity(d["capacity"], "bytes", f"{where}.capacity"),
        bandwidth_Bps=_bandwidth(d["bandwidth"], clock_hz, f"{where}.bandwidth"),
        instances=_int(d.get("instances", 1), f"{where}.instances"),
        latency_s=parse_quantity(d.get("latency", 0.0), "seconds", f"{where}.latency"),
        read_energy_pj_per_byte=_nonneg(d.get("read_energy_pj_per_byte", e), f"{where}.read_energy_pj_per_byte"),
        write_energy_pj_per_byte=_nonneg(d.get("write_energy_pj_per_byte", e), f"{where}.write_energy_pj_per_byte"),
        multicast=_bool(d.get("multicast", False), f"{where}.multicast"),
        double_buffer=_bool(d.get("double_buffer", True), f"{where}.double_buffer"),
        partitions=parts,
        serves=serves,
    )


def _with_default_energies(arch: Arch, d: dict[str, Any], name: str) -> Arch:
    """Fill energies a preset does not state from the technology table (``arch/tech.py``):
    MACs and vector FLOPs of every class without one from ``technology_nm``, memory levels from their
    ``kind`` (a DRAM technology, or ``sram``/``regfile`` sized by capacity; no kind: DDR4 for the
    outermost level, SRAM for the others, as the area model assumes). Without ``technology_nm`` a
    stated MAC/FLOP table must cover every class the unit computes."""
    node = d.get("technology_nm")
    if node is None:
        for unit, key in ((arch.matrix, "energy_pj_per_mac"), (arch.vector, "energy_pj_per_flop")):
            missing = [c for c in unit.rate_per_cycle if c not in unit.energy_pj]
            if unit.energy_pj and missing:
                raise SpecError(f"device {name!r}: {unit.kind}.{key} gives no energy for {', '.join(missing)}, which "
                                f"the unit computes; add them, or set technology_nm to take them from the technology table")
        return arch
    if isinstance(node, bool) or not isinstance(node, int | float) or not node > 0:
        raise SpecError(f"device {name!r}: technology_nm must be a positive number, got {node!r}")
    from dataclasses import replace

    from . import tech

    # classes a stated table leaves out come from the table too (merged, the stated values kept)
    mat = arch.matrix
    mat = replace(mat, energy_pj={**{k: tech.mac_energy_pj(k, node) for k in mat.rate_per_cycle if k not in mat.energy_pj},
                                  **mat.energy_pj})
    vec = arch.vector
    vec = replace(vec, energy_pj={**{k: tech.flop_energy_pj(k, node) for k in vec.rate_per_cycle if k not in vec.energy_pj},
                                  **vec.energy_pj})
    levels = []
    for i, (lv, raw) in enumerate(zip(arch.memory, d["memory"], strict=True)):
        kind = tech.level_kind(raw.get("kind"), i)  # no kind: the area model's rule (outermost DDR4, others SRAM)
        given = any(k in raw for k in ("energy_pj_per_byte", "read_energy_pj_per_byte", "write_energy_pj_per_byte"))
        if not given:
            if kind in ("sram", "regfile"):
                e = tech.sram_energy_pj_per_byte(lv.capacity_bytes, node)
            else:
                e = tech.dram_energy_pj_per_byte(str(kind))
            lv = replace(lv, read_energy_pj_per_byte=e, write_energy_pj_per_byte=e)
        levels.append(lv)
    return replace(arch, matrix=mat, vector=vec, memory=tuple(levels))


def arch_from_dict(d: Any, name: str = "device") -> Arch:
    """Build and validate an :class:`Arch` from a parsed YAML mapping."""
    if not isinstance(d, dict):
        raise SpecError(f"device {name!r}: expected a mapping of fields, got {type(d).__name__}")
    _check_keys(d, _TOP, f"device {name!r}")
    name = str(d.get("name", name))
    for k in ("clock", "matrix", "vector", "memory"):
        if k not in d:
            raise SpecError(f"device {name!r}: missing required field {k!r}")
    if not isinstance(d["memory"], list):
        raise SpecError(f"device {name!r}: memory must be a list of levels, outermost first")
    arch = Arch(
        name=name,
        device_class=str(d.get("class", "generic")),
        clock_hz=parse_quantity(d["clock"], "hz", f"device {name!r} clock"),
        memory=tuple(_level(lv, i, name, parse_quantity(d["clock"], "hz", f"device {name!r} clock"))
                     for i, lv in enumerate(d["memory"])),
        matrix=_unit(d["matrix"], "matrix", f"device {name!r} matrix"),
        vector=_unit(d["vector"], "vector", f"device {name!r} vector"),
        launch_overhead_s=parse_quantity(d.get("launch_overhead", 0.0), "seconds", f"device {name!r} launch_overhead"),
        static_power_w=parse_quantity(d.get("static_power", 0.0), "watts", f"device {name!r} static_power"),
        tdp_w=parse_quantity(d.get("tdp", 0.0), "watts", f"device {name!r} tdp"),
        description=str(d.get("description", "")),
        features=_features(d.get("features"), name),
        rules=dict(d.get("rules") or {}) if isinstance(d.get("rules") or {}, dict) else _bad_rules(name),
        meta={k: d[k] for k in ("technology_nm", "sources", "notes", "die_area_mm2") if k in d},
    )
    if "formats" in d:
        arch.meta["formats"] = _formats(d["formats"], name)
    arch = _with_default_energies(arch, d, name)
    arch.validate()
    kinds = {str(lv["name"]): lv["kind"] for lv in d["memory"] if lv.get("kind") is not None}
    if kinds:
        arch.meta["memory_kinds"] = kinds
    if "die" in d:  # the physical die where the device enables fewer units (area/cost model, arch/area.py)
        from .area import parse_die

        arch.meta["die"] = parse_die(d["die"], arch)
    if arch.device_class == "gpu":
        from .gpu import parse_gpu_rules

        parse_gpu_rules(arch.rules, f"device {name!r}")
        missing = [n for n in ("l2", "smem", "rf") if n not in {lv.name for lv in arch.memory}]
        if missing:
            raise SpecError(f"device {name!r}: a gpu's kernel model reads its levels l2, smem and rf by name; "
                            f"none is named {', '.join(missing)} (rename the matching levels)")
    if arch.device_class == "pim" or "pim" in d:  # bank-level DRAM PIM: organisation, timing, PUs (arch/pim.py)
        from .pim import check_pim_arch, parse_pim

        if arch.device_class != "pim":
            raise SpecError(f"device {name!r}: a pim: section needs class: pim (the device is {arch.device_class})")
        if "pim" not in d:
            raise SpecError(f"device {name!r}: class pim needs a pim: section (DRAM organisation, timing, PUs)")
        spec = parse_pim(d["pim"], name)
        check_pim_arch(spec, arch.matrix.instances, name)
        arch.rules["pim"] = spec
    if arch.device_class == "wafer" or "wafer" in d:  # wafer-scale mesh of cores (arch/wafer.py)
        from .wafer import check_wafer_arch, parse_wafer, wafer_spec

        if arch.device_class != "wafer" or "wafer" not in d:
            raise SpecError(f"device {name!r}: class wafer and a wafer: section (mesh, cores, SRAM, links) go together")
        wspec = parse_wafer(d["wafer"], arch.matrix_clock_hz, name)
        check_wafer_arch(wspec, arch.matrix.instances, name, arch.memory[-1])
        arch.rules["wafer"] = wspec
        wafer_spec(arch)  # refused at load: a memory beyond the cores' SRAM
    if arch.device_class == "fpga" or "fpga" in d:  # FPGA part + LLM-engine template (arch/fpga.py)
        from .fpga import check_clock, check_fits, parse_fpga

        if arch.device_class != "fpga" or "fpga" not in d:
            raise SpecError(f"device {name!r}: class fpga and an fpga: section (part, template, estimate) go together")
        fspec = parse_fpga(d["fpga"], name)
        t = fspec.template
        if arch.matrix.instances != t.cores * t.vpus or arch.matrix.rate_per_cycle.get("int8") != t.chain * t.macs_per_dsp:
            raise SpecError(f"device {name!r}: matrix must be the template's VPUs: instances = cores x vpus "
                            f"({t.cores * t.vpus}) and int8 macs_per_cycle = chain x macs_per_dsp ({t.chain * t.macs_per_dsp})")
        sfu = {c: r for c, r in arch.vector.rate_per_cycle.items() if c in ("fp16", "fp32")}
        if arch.vector.instances != t.cores or any(r != t.sfu_lanes for r in sfu.values()):
            raise SpecError(f"device {name!r}: vector must be the template's SFUs: instances = cores ({t.cores}) and "
                            f"fp16/fp32 flops_per_cycle = sfu_lanes ({t.sfu_lanes})")
        backing_kind = str(arch.meta.get("memory_kinds", {}).get(arch.backing.name) or "")
        if fspec.part.hbm_channels and not backing_kind.startswith("hbm"):
            raise SpecError(f"device {name!r}: fpga.part.hbm_channels describes HBM, but the backing memory "
                            f"{arch.backing.name!r} is of kind {backing_kind or 'unset'!r}; drop hbm_channels or give "
                            "an HBM level (kind: hbm2)")
        if fspec.part.ddr_bytes and not backing_kind.startswith("hbm"):
            raise SpecError(f"device {name!r}: fpga.part.ddr is a DDR tier behind an HBM backing level, but "
                            f"{arch.backing.name!r} is of kind {backing_kind or 'unset'!r}; make the DDR the backing "
                            "memory level instead")
        check_fits(fspec, name)
        check_clock(fspec, name, arch.matrix_clock_hz)
        arch.rules["fpga"] = fspec
        if fspec.power is not None:  # the running board's power: idle + the engine's logic (arch/fpga.py)
            from dataclasses import replace

            from .fpga import engine_power_w

            if "static_power" in d:
                raise SpecError(f"device {name!r}: give static_power or fpga.power, not both (fpga.power derives it "
                                "from the idle board and the template's logic)")
            for unit, key in (("matrix", "energy_pj_per_mac"), ("vector", "energy_pj_per_flop")):
                if key in d.get(unit, {}):
                    raise SpecError(f"device {name!r}: give {unit}.{key} or fpga.power, not both (fpga.power's logic "
                                    "energy covers the MACs and the SFU FLOPs)")
            power = engine_power_w(fspec, arch.matrix_clock_hz)
            assert power is not None
            # the logic's switching is in the running power: the MACs and SFU FLOPs cost nothing more
            arch = replace(arch, static_power_w=power["running_w"],
                           matrix=replace(arch.matrix, energy_pj={k: 0.0 for k in arch.matrix.rate_per_cycle}),
                           vector=replace(arch.vector, energy_pj={k: 0.0 for k in arch.vector.rate_per_cycle}))
    if arch.device_class == "dataflow" or "rdu" in d:  # reconfigurable dataflow unit: PCUs, PMUs, tiers (arch/rdu.py)
        from .rdu import check_rdu_arch, parse_rdu

        if arch.device_class != "dataflow" or "rdu" not in d:
            raise SpecError(f"device {name!r}: class dataflow and an rdu: section (PCUs, PMUs, DDR tier) go together")
        rspec = parse_rdu(d["rdu"], name)
        check_rdu_arch(rspec, arch, name)
        arch.rules["rdu"] = rspec
    if arch.device_class == "systolic" and arch.matrix.array is None:
        raise SpecError(f"device {name!r}: class systolic needs matrix.array: [rows, cols] (and a dataflow); without an "
                        "array use class generic (throughput lanes)")
    return arch


def read_preset(ref: str | Path, directory: Path, what: str, names: list[str],
                also: tuple[str, ...] = ()) -> tuple[Any, Path]:
    """The parsed YAML of a ``what`` (``device``, ``system``) given by preset name (a file in
    ``directory``) or path, and the file's path; one-line errors for missing or malformed files (an
    unknown name lists ``names`` and ``also``, the host + PIM presets, with the close ones first)."""
    path = Path(ref)
    if not path.is_file():
        cand = directory / f"{ref}.yaml"
        if not cand.is_file():
            if path.is_dir():
                raise SpecError(f"{what} {str(ref)!r} is a directory; give a {what} YAML file or a preset name")
            if path.suffix in (".yaml", ".yml") or "/" in str(ref):
                raise SpecError(f"{what} file {str(ref)!r} does not exist")
            import difflib

            pool = [*names, *also]
            close = list(dict.fromkeys([n for n in pool if n.startswith(str(ref))]
                                       + difflib.get_close_matches(str(ref), pool, n=3)))[:3]
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            more = f"; host + PIM presets (xpusim simulate --arch): {', '.join(also)}" if also else ""
            raise PresetNotFound(f"unknown {what} {str(ref)!r}; {hint}presets: {', '.join(names)}{more} (or give a YAML path)")
        path = cand
    return load_yaml(read_text(path, f"a {what} YAML"), path), path


def arch_dict(ref: str | Path) -> tuple[dict[str, Any], str]:
    """The parsed YAML mapping of a device (preset name or YAML path) and its name, before
    validation: what a design-space search edits knob by knob."""
    hetero = tuple(sorted(p.stem for p in (PRESETS_DIR.parent / "hetero").glob("*.yaml")))
    data, path = read_preset(ref, PRESETS_DIR, "device", list_archs(), hetero)
    return data, path.stem


def load_arch(ref: str | Path | Arch) -> Arch:
    """Load a device by preset name or YAML path."""
    if isinstance(ref, Arch):
        return ref
    data, name = arch_dict(ref)
    return arch_from_dict(data, name)
