"""Malformed device and model files: nothing but XpusimError escapes the loaders."""

import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xpusim.arch.loader import PRESETS_DIR, load_arch
from xpusim.errors import XpusimError
from xpusim.workloads.model import MODELS_DIR, load_model

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["80 GiB", "2 TB/s", "1 GHz", "-3", "bf16", "ws", "1e400"]))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c,
                                                                                           max_size=4)), max_leaves=12)

ARCH = yaml.safe_load((PRESETS_DIR / "a100-80gb.yaml").read_text())
MODEL = json.loads((MODELS_DIR / "llama-3-8b.json").read_text())


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(base, data):
    doc = json.loads(json.dumps(base))
    paths = [p for p in _paths(doc) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = doc
        try:
            for k in path[:-1]:
                parent = parent[k]
            if data.draw(st.booleans()):
                parent[path[-1]] = data.draw(values)
            elif isinstance(parent, dict):
                parent.pop(path[-1], None)
        except (KeyError, IndexError, TypeError):
            pass
    return doc


def _load_quietly(loader, path):
    try:
        loader(str(path))
    except XpusimError as e:
        assert "\n" not in str(e)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_arch_files(tmp_path, data):
    p = tmp_path / "dev.yaml"
    p.write_text(yaml.safe_dump(_mutate(ARCH, data)))
    _load_quietly(load_arch, p)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_model_files(tmp_path, data):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(_mutate(MODEL, data)))
    _load_quietly(load_model, p)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200), st.sampled_from(["dev.yaml", "m.yaml", "config.json"]))
def test_garbage_text(tmp_path, text, name):
    p = tmp_path / name
    p.write_text(text)
    _load_quietly(load_arch if name == "dev.yaml" else load_model, p)


CLASS_PRESETS = {n: yaml.safe_load((PRESETS_DIR / f"{n}.yaml").read_text())
                 for n in ("wse-2", "sn40l", "alveo-u280", "versal-vck190", "hbm2-pim", "duplex-logic-pim")}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(CLASS_PRESETS)), st.data())
def test_mutated_device_class_sections(tmp_path, name, data):
    """The wafer:, rdu:, fpga: and pim: sections: a mutated preset loads or fails with one line."""
    p = tmp_path / "dev.yaml"
    p.write_text(yaml.safe_dump(_mutate(CLASS_PRESETS[name], data)))
    _load_quietly(load_arch, p)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=24),
                 st.builds(lambda base, n, m: f"{base}-{n}:{m}", st.sampled_from(["int8", "int4-g128", "fp16", "bf16", "x"]),
                           st.text(max_size=4), st.text(max_size=4))))
def test_garbage_format_names(name):
    """Any format string (N:M suffixes included) is a format or a one-line DtypeError."""
    from xpusim.dtypes import get_dtype

    try:
        d = get_dtype(name)
    except XpusimError as e:
        assert "\n" not in str(e)
    else:
        assert d.bytes > 0 and 0 < d.density <= 1
