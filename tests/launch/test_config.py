"""The config schema: every bad input is one clear error naming the key path; good input round-trips."""
import pytest
import yaml

from lactron.launch.config import Config, config_to_yaml, load_config
from lactron.launch.schema import ConfigError, from_dict

TINY = "configs/lm_tiny.yaml"


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_default_config_loads_and_round_trips(tmp_path):
    cfg = load_config(TINY)
    assert cfg.model.fast_weight.rule == "lact" and cfg.cluster.num_workers == 2
    again = load_config(write(tmp_path, config_to_yaml(cfg)))
    assert again == cfg


def test_unknown_key_names_path_and_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.fast_weight\.chunk_sise'.*"
                                          r"did you mean 'model\.fast_weight\.chunk_size'"):
        load_config(TINY, ["model.fast_weight.chunk_sise=64"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*did you mean 'train'"):
        load_config(write(tmp_path, "trian:\n  steps: 3\n"))


def test_wrong_types_name_path_and_value():
    with pytest.raises(ConfigError, match=r"train\.steps: expected an integer, got str 'ten'"):
        load_config(TINY, ["train.steps=ten"])
    with pytest.raises(ConfigError, match=r"model\.fast_weight\.muon: expected true/false"):
        load_config(TINY, ["model.fast_weight.muon=3"])
    with pytest.raises(ConfigError, match=r"train\.precision: 'bf61' is not one of 'fp32', 'bf16'.*'bf16'"):
        load_config(TINY, ["train.precision=bf61"])
    with pytest.raises(ConfigError, match=r"model: expected a mapping"):
        load_config(TINY, ["model=5"])


def test_float_written_without_dot_is_accepted():
    cfg = load_config(TINY, ["optim.lr=1e-3"])  # YAML 1.1 reads 1e-3 as a string
    assert cfg.optim.lr == pytest.approx(1e-3)


def test_layout_must_divide_world():
    with pytest.raises(ConfigError, match=r"cluster\.num_workers=3 is not divisible by parallel\.tp x parallel\.cp"
                                          r" = 2 x 1 = 2"):
        load_config(TINY, ["cluster.num_workers=3", "parallel.tp=2"])


def test_batch_must_divide_over_dp():
    with pytest.raises(ConfigError, match=r"train\.global_batch_size=10 is not divisible by data\.micro_batch_size"
                                          r" x DP = 4 x 2 = 8"):
        load_config(TINY, ["train.global_batch_size=10"])


def test_model_range_errors_name_the_numbers():
    with pytest.raises(ConfigError, match=r"model\.dim=130 is not divisible by model\.n_heads=4"):
        load_config(TINY, ["model.dim=130"])
    with pytest.raises(ConfigError, match=r"model\.window=64 < model\.fast_weight\.chunk_size=128"):
        load_config(TINY, ["model.window=64"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+"):
        load_config(write(tmp_path, "run:\n  name: [unclosed\n"))
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"must look like key.sub=value"):
        load_config(TINY, ["train.steps"])


def test_yaml_is_loaded_safely(tmp_path):
    # A python-object tag must not be constructed (safe_load refuses it).
    p = write(tmp_path, "run: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError):
        load_config(p)


def test_override_creates_nested_and_rejects_value_as_section():
    cfg = load_config(TINY, ["cluster.env.FOO=bar", "run.name=x"])
    assert cfg.cluster.env == {"FOO": "bar"} and cfg.run.dir == "runs/x"
    with pytest.raises(ConfigError, match=r"'train\.steps' is a value, not a section"):
        load_config(TINY, ["train.steps.x=1"])


def test_from_dict_defaults():
    cfg = from_dict(Config, {})
    assert cfg.dp == cfg.cluster.num_workers and yaml.safe_load(config_to_yaml(cfg))["run"]["name"] == "lactron"


def test_tagged_union_dispatches_on_kind():
    from dataclasses import dataclass, field
    from typing import Literal, Union

    @dataclass
    class A:
        kind: Literal["a"] = "a"
        x: int = 1

    @dataclass
    class B:
        kind: Literal["b"] = "b"
        y: int = 2

    @dataclass
    class Top:
        model: Union[A, B] = field(default_factory=A)

    assert from_dict(Top, {"model": {"x": 5}}).model == A(x=5)          # default: first member
    assert from_dict(Top, {"model": {"kind": "b", "y": 7}}).model == B(y=7)
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.x'"):
        from_dict(Top, {"model": {"kind": "b", "x": 7}})
    with pytest.raises(ConfigError, match=r"model\.kind: 'c' is not one of 'a', 'b'"):
        from_dict(Top, {"model": {"kind": "c"}})
