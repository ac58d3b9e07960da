"""Fuzzing the config loader (spikeformer/config.py): damaged TOML files, damaged values and
damaged ``--set KEY=VALUE`` overrides end in a one-line ConfigError or a valid Config, never in
another exception (tests/fuzz_profiles.py has the profiles, the mutations and the oracle)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_profiles import NASTY, Tally, fuzz_settings, json_values, mutated_bytes, mutated_json
from spikeformer.config import Config, config_from_dict, load_config, parse_overrides
from spikeformer.errors import ConfigError

# a tiny valid config, with a [section] as users write them (sections are flattened)
VALID = {"task": "digits", "dim": 16, "heads": 2, "head_dim": 8, "depth": 1, "time_steps": 2, "epochs": 1,
         "beta": 0.5, "lr": 3e-3, "notes": "fuzz", "learn_decay": True}
VALID_TOML = """# tiny fuzz seed
task = "digits"
notes = "fuzz"

[model]
dim = 16
heads = 2
head_dim = 8
depth = 1
time_steps = 2
beta = 0.5
learn_decay = true

[training]
epochs = 1
lr = 3e-3
""".encode()


def toml_value(value: Any) -> str:
    """A Python value in TOML syntax (None, which TOML lacks, as an empty inline table)."""
    if value is None:
        return "{}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) < 10 ** 4000 else "9" * 5000  # past Python's int-string limit
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_text(values: Any) -> bytes:
    if not isinstance(values, dict):
        return f"value = {toml_value(values)}\n".encode()
    return "".join(f"{json.dumps(str(k))} = {toml_value(v)}\n" for k, v in values.items()).encode()


def load_bytes(blob: bytes, overrides: dict | None = None) -> Config:
    with tempfile.TemporaryDirectory() as tmp:  # hypothesis reuses fixtures: one folder per example
        path = Path(tmp) / "config.toml"
        path.write_bytes(blob)
        return load_config(path, overrides)


def test_valid_seed_loads():
    cfg = load_bytes(VALID_TOML)
    assert (cfg.dim, cfg.heads, cfg.epochs, cfg.learn_decay) == (16, 2, 1, True)
    assert config_from_dict(VALID).to_dict() == cfg.to_dict()


def test_fuzz_toml_bytes():
    """Truncations, bit flips, random bytes and duplicated ranges of a valid TOML file."""
    tally = Tally("config/toml-bytes")

    @fuzz_settings(120)
    @given(blob=mutated_bytes(VALID_TOML))
    def run(blob):
        tally.check(lambda: load_bytes(blob))

    run()
    tally.finish()


DEEP = ["v = " + "[" * 5000, "v = " + "{a = " * 600 + "1" + "}" * 600, "a" + ".a" * 2000 + " = 1",
        "dim = " + "9" * 5000, "dim = 1" + "0" * 400, "lr = 1e999", "dim = 0x" + "f" * 40, "dim = -0",
        "task = '" + "x" * 100000 + "'"]


def test_fuzz_toml_values():
    """Valid keys with damaged values (wrong types, huge, negative, NaN/inf, nested), missing and
    unknown keys, and a few hand-made extremes (deep nesting, 5000-digit integers)."""
    tally = Tally("config/toml-values")

    @fuzz_settings(100)
    @given(blob=st.builds(toml_text, mutated_json(VALID)) | st.integers(0, len(DEEP) - 1).map(lambda i: DEEP[i].encode()))
    def run(blob):
        tally.check(lambda: load_bytes(blob))

    run()
    tally.finish()


def test_fuzz_config_from_dict():
    """The dict path (checkpoint.json's config goes through it): any JSON value per key."""
    tally = Tally("config/dict")
    keys = st.sampled_from(sorted(VALID) + ["dim", "seed", "qat_vth", "recall_train", "recall_keys", "grad_clip",
                                            "weight_decay", "a_minus", "attn_scale", "extra", "init_from"])

    @fuzz_settings(120)
    @given(values=mutated_json(VALID) | st.dictionaries(keys, json_values() | st.sampled_from(NASTY), max_size=4)
           | json_values())
    def run(values):
        tally.check(lambda: config_from_dict(values, source="fuzz"))

    run()
    tally.finish()


SET_KEYS = ["dim", "depth", "lr", "beta", "task", "notes", "learn_decay", "seed", "epochs", "dimm", "", " dim "]


def test_fuzz_set_overrides():
    """``--set KEY=VALUE`` items (TOML value syntax, bare words as strings) on a valid file."""
    tally = Tally("config/set")
    raw = (st.sampled_from(["1", "0", "-1", "1e999", "nan", "inf", "true", "\"x\"", "[1, 2]", "{a = 1}", "", "=",
                            "1\nw = 2", "1 # c", "9" * 5000, "[" * 5000, "'''", "\"\\u0000\"", "0x10", "1_000"])
           | st.text(max_size=12) | st.builds(toml_value, json_values()))
    item = st.builds(lambda k, sep, v: f"{k}{sep}{v}", st.sampled_from(SET_KEYS), st.sampled_from(["=", "", " = "]),
                     raw)

    @fuzz_settings(120)
    @given(items=st.lists(item, min_size=1, max_size=3))
    def run(items):
        tally.check(lambda: load_bytes(VALID_TOML, parse_overrides(items)))

    run()
    tally.finish()


# inputs the fuzzer found, each once a crash (other exception) or a silent acceptance
KNOWN = {
    "5000-digit integer": "dim = " + "9" * 5000,  # was ValueError (int-string limit) from tomllib
    "deep arrays": "dim = " + "[" * 5000,  # was RecursionError
    "deep tables": "dim = " + "{a = " * 600 + "1" + "}" * 600,  # was RecursionError
    "long dotted key": "a" + ".a" * 2000 + " = 1",  # was RecursionError
    "dim 10**9": "dim = 1000000000",  # was accepted: the model then allocates
    "head_dim 2000": "heads = 8\nhead_dim = 2000",  # was accepted: 32M attention state values per sample
    "nan weight_decay": "weight_decay = nan",  # was accepted (NaN < 0 is false)
    "inf grad_clip": "grad_clip = inf",  # was accepted
    "huge lr": "lr = 1e300",  # was accepted: AdamW's step overflows float32
    "huge qat_vth": "qat_vth = 1" + "0" * 400,  # was accepted: building the model raised OverflowError
    "recall data": 'task = "recall"\nmode = "causal"\nrecall_keys = 4096\nrecall_values = 4096\nrecall_pairs = 4096',
}


def test_known_damage_is_one_config_error():
    for name, text in KNOWN.items():
        with pytest.raises(ConfigError) as info:
            load_bytes(text.encode())
        assert "\n" not in str(info.value), name
    for values in ([1, 2], None, {"lr": 10 ** 400}, {"seed": -1}, {3: 1}):  # AttributeError / OverflowError before
        with pytest.raises(ConfigError):
            config_from_dict(values)
    for items in (["dim=1\nw = 2"], ["dim"], ["dim=" + "9" * 5000]):
        with pytest.raises(ConfigError):
            load_bytes(VALID_TOML, parse_overrides(items))
