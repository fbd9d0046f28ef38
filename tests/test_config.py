"""Every shipped config validates; mistakes give one line naming the field."""

from pathlib import Path

import pytest
import yaml

from aria.config import RunConfig, load_config
from aria.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
RUN_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if p.name != "theory.yaml")


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_shipped_run_configs_validate(path):
    config = load_config(path)
    assert isinstance(config, RunConfig)


def test_there_are_shipped_configs():
    names = {p.name for p in RUN_CONFIGS}
    assert {"concepts-quick.yaml", "concepts-gpu.yaml", "shapes-quick.yaml", "shapes-gpu.yaml",
            "sd-bk-small.yaml"} <= names


def write(tmp_path, data):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_overrides_are_typed(tmp_path):
    config = load_config(write(tmp_path, {}), ["distillation.lr=3e-4", "backend.compile=true", "regions.k=7"])
    assert config.distillation.lr == pytest.approx(3e-4)
    assert config.backend.compile is True and config.regions.k == 7


def test_strategy_flag_overrides_config_and_keeps_per_strategy_params(tmp_path):
    path = write(tmp_path, {"strategy": {"name": "rc", "params": {"aria": {"eps": 0.3}}}})
    config = load_config(path, strategy="aria")
    assert config.strategy.name == "aria" and config.strategy.params_for() == {"eps": 0.3}


@pytest.mark.parametrize(
    "data, overrides, needle",
    [
        ({"distilation": {}}, [], "distilation: unknown key"),
        ({"distillation": {"lr": -1}}, [], "distillation.lr"),
        ({"distillation": {"lr": 0}}, [], "distillation.lr"),
        ({"distillation": {"steps": "many"}}, [], "distillation.steps"),
        ({"regions": {"k": 0}}, [], "regions.k"),
        ({"student": {"variant": "huge"}}, [], "student.variant"),
        ({"strategy": {"params": {"aria": {"alpha": "fast"}}}}, [], "alpha"),
        ({"strategy": {"params": {"aria": {"alpah": 0.1}}}}, [], "alpah"),
        ({}, ["distillation.lr"], "expected key.path=value"),
        ({}, ["distillation.lr.x=1"], "distillation.lr"),
        ({"seed": 3}, ["seed.x=1"], "not a section"),
    ],
)
def test_bad_configs_name_the_field(tmp_path, data, overrides, needle):
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, data), overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_strategy_suggests_a_name(tmp_path):
    with pytest.raises(UserError, match="did you mean 'aria'"):
        load_config(write(tmp_path, {}), strategy="arai")


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: [1, 2\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(bad)
    bad.write_bytes(b"\xff\xfe: 1\n")
    with pytest.raises(UserError, match="UTF-8"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(bad)


def test_override_values_are_the_values_the_settings_resolve_to():
    from aria.config import override_values

    assert override_values(["data.concepts.seed=01", " student.init_path = ./s1/ ", "distillation.lr=1e-3"]) == \
        override_values(["distillation.lr=0.001", "student.init_path=s1", "data.concepts.seed=2",
                         "data.concepts.seed=1"]) == \
        {"data.concepts.seed": 1, "student.init_path": "s1", "distillation.lr": 0.001}
    # keys that name no field, and values that do not fit theirs, are kept as parsed (load_config names them)
    assert override_values(["strategy.params.aria.eps=0.05", "data.world.seed=1.5"]) == \
        {"strategy.params.aria.eps": 0.05, "data.world.seed": 1.5}
