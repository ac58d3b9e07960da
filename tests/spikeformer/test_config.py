"""Config: defaults, strict keys and types, ranges, TOML loading, cross-field rules."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from spikeformer.config import CHOICES, FIELDS, Config, config_from_dict, load_config
from spikeformer.errors import ConfigError

DEMO_CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("demos").glob("*.toml"))


def test_defaults_validate():
    cfg = Config()
    cfg.validate()
    assert config_from_dict({}) == cfg
    assert cfg.scale == 1.0 / cfg.head_dim
    assert Config(attn_scale=0.25).scale == 0.25


def test_to_dict_round_trip():
    cfg = Config(dim=32, heads=2, head_dim=16, variant="stdp", lr=1e-3, notes="x")
    data = cfg.to_dict()
    assert "extra" not in data
    assert set(data) == set(FIELDS)
    assert config_from_dict(data) == cfg


@pytest.mark.parametrize("key,value", [(k, v[0]) for k, v in CHOICES.items()])
def test_every_choice_field_is_settable(key, value):
    assert getattr(config_from_dict({key: value}), key) == value


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match="frobnicate") as info:
        config_from_dict({"frobnicate": 1})
    assert isinstance(info.value, ValueError)
    assert "did you mean" not in str(info.value)


def test_near_miss_key_suggests_the_right_one():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"epoch": 3})
    message = str(info.value)
    assert "'epoch'" in message
    assert "did you mean 'epochs'" in message


def test_extra_is_not_settable_from_dicts():
    with pytest.raises(ConfigError, match="extra"):
        config_from_dict({"extra": {}})


@pytest.mark.parametrize(
    "key,value",
    [
        ("epochs", "3"),  # string for int
        ("epochs", 3.0),  # float for int
        ("epochs", True),  # bool for int
        ("dim", False),
        ("lr", "0.1"),  # string for float
        ("lr", True),  # bool for float
        ("learn_decay", 1),  # int for bool
        ("variant", 1),  # int for str
        ("notes", None),
    ],
)
def test_wrong_type_rejected(key, value):
    with pytest.raises(ConfigError) as info:
        config_from_dict({key: value})
    assert repr(key) in str(info.value)


def test_int_accepted_for_float():
    cfg = config_from_dict({"lr": 1, "beta": 0})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.beta == 0.0 and isinstance(cfg.beta, float)


@pytest.mark.parametrize(
    "values,key",
    [
        ({"beta": 1.5}, "beta"),
        ({"alpha": -0.1}, "alpha"),
        ({"attn_decay": 1.01}, "attn_decay"),
        ({"pre_decay": -1.0}, "pre_decay"),
        ({"eligibility_decay": 2.0}, "eligibility_decay"),
        ({"delta_rate": 1.0}, "delta_rate"),
        ({"delta_rate": 0.0}, "delta_rate"),
        ({"threshold": 0.0}, "threshold"),
        ({"lr": -1e-3}, "lr"),
        ({"slope": 0.0}, "slope"),
        ({"dim": 0}, "dim"),
        ({"heads": -1}, "heads"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"time_steps": 0}, "time_steps"),
        ({"variant": "oja"}, "variant"),
        ({"task": "cifar"}, "task"),
        ({"device": "tpu"}, "device"),
        ({"patch_size": 3}, "patch_size"),
        ({"stem": "conv2d", "task": "mnist1d"}, "conv2d.*'mnist1d' is not one"),
        ({"stem": "conv2d", "rule": "eprop"}, "not the conv2d stem"),
        ({"recall_pairs_min": 5, "recall_pairs": 4}, "recall_pairs_min"),
        ({"recall_pairs": 17, "recall_keys": 16, "task": "recall", "mode": "causal"}, "recall_pairs"),
        ({"attention_impl": "parallel", "variant": "delta"}, "parallel"),
    ],
)
def test_out_of_range_rejected(values, key):
    with pytest.raises(ConfigError, match=key):
        config_from_dict(values)


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError):
        Config(beta=2.0)
    cfg = Config()
    cfg.dim = -3
    with pytest.raises(ConfigError, match="dim"):
        cfg.validate()


def test_recall_task_requires_causal_mode():
    with pytest.raises(ConfigError, match="causal"):
        config_from_dict({"task": "recall"})
    cfg = config_from_dict({"task": "recall", "mode": "causal"})
    assert cfg.task == "recall" and cfg.mode == "causal"
    with pytest.raises(ConfigError, match="global"):
        config_from_dict({"task": "digits", "mode": "causal"})


TOML = """
task = "digits"
notes = "from a file"

[model]
dim = 32
heads = 2
head_dim = 8
variant = "delta"
delta_rate = 0.25

[train]
epochs = 3
lr = 1
learn_decay = false
"""


def test_load_config_with_sections(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(TOML)
    cfg = load_config(path)
    assert (cfg.dim, cfg.heads, cfg.head_dim, cfg.variant, cfg.delta_rate) == (32, 2, 8, "delta", 0.25)
    assert (cfg.epochs, cfg.lr, cfg.learn_decay, cfg.notes) == (3, 1.0, False, "from a file")
    assert isinstance(cfg.lr, float)
    # everything else is the default
    defaults = Config()
    changed = {f.name for f in dataclasses.fields(Config) if getattr(cfg, f.name) != getattr(defaults, f.name)}
    assert changed == {"dim", "heads", "head_dim", "variant", "delta_rate", "epochs", "lr", "learn_decay", "notes"}
    # overrides win over the file
    over = load_config(str(path), overrides={"epochs": 7, "variant": "hebbian"})
    assert over.epochs == 7 and over.variant == "hebbian" and over.dim == 32


def test_load_config_unknown_key_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepoch = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "bad.toml" in str(info.value) and "'epochs'" in str(info.value)


def test_load_config_wrong_type_in_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('epochs = "ten"\n')
    with pytest.raises(ConfigError, match="epochs"):
        load_config(path)


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError):
        load_config(tmp_path)  # a directory is not a config file


@pytest.mark.parametrize("text", ["dim = = 3\n", "[model\ndim = 3\n", 'notes = "unterminated\n'])
def test_load_config_invalid_toml(tmp_path, text):
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_load_config_binary_file(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(ConfigError):
        load_config(path)


def test_shipped_demo_configs_load():
    for path in DEMO_CONFIGS:
        load_config(path)


def test_every_spiking_demo_config_exports():
    """Issue 14: train then export just works. Only the ``*-nodelay`` configs (kept for figures
    measured with them) and the ANN baselines may lack Loihi timing."""
    plain = []
    for path in DEMO_CONFIGS:
        if path.stem.endswith("-nodelay"):
            assert path.with_name(path.name.replace("-nodelay", "")).is_file(), path.name
            continue
        cfg = load_config(path)
        if cfg.model == "spikeformer" and not cfg.dense_delay:
            plain.append(path.name)
    assert plain == []


# Out-of-range values must be rejected by the config, not crash later with a raw traceback
# (math domain error, cross_entropy, AdamW) or be silently reinterpreted.
@pytest.mark.parametrize(
    "values",
    [
        {"variant": "stdp", "a_plus": 0.0},
        {"variant": "stdp", "a_minus": -0.5},
        {"label_smoothing": 1.5},
        {"label_smoothing": -0.1},
        {"weight_decay": -0.01},
        {"attn_scale": -0.5},
        {"grad_clip": -1.0},
        {"warmup_epochs": -1},
        {"num_threads": -2},
        {"recall_pairs_min": -1},
        {"lr": float("inf")},
    ],
    ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_out_of_range_values_are_rejected(values):
    try:
        config_from_dict(values)
    except ConfigError:
        return
    pytest.fail(f"config accepted out-of-range {values}")


def test_same_key_in_two_sections_is_an_error(tmp_path):
    path = tmp_path / "dup.toml"
    path.write_text("[model]\ndim = 32\n\n[train]\ndim = 64\n")
    try:
        cfg = load_config(path)
    except ConfigError:
        return
    pytest.fail(f"key 'dim' given twice was silently resolved to {cfg.dim}")


def test_attention_impl_choices_are_the_attention_modules():
    """config.py stays free of torch, so it lists the implementations itself; they must be the same."""
    from spikeformer.attention import IMPLEMENTATIONS
    from spikeformer.config import CHOICES

    assert CHOICES["attention_impl"] == IMPLEMENTATIONS


def test_mnist_patch_size_must_divide_28():
    from spikeformer.config import Config

    assert Config(task="mnist", patch_size=7).task_shape() == (16, 49, 10)
    with pytest.raises(ConfigError, match="must divide the 28-pixel mnist image \\(1, 2, 4, 7, 14, 28\\)"):
        Config(task="mnist", patch_size=5)
    Config(task="mnist", patch_size=4, augment_shift=2)  # augmentation applies to both image tasks
