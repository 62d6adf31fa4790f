import time
import types
import typing
from typing import Any

import pytest
from pydantic import BaseModel

from cluster.config import DEFAULT_CONFIG, ConfigError, StudyConfig, load_config, parse_override
from pretrain.method_options import METHOD_OPTIONS


def test_quickstart_config_is_valid_and_matches_the_defaults_that_matter():
    cfg = load_config()
    assert cfg.study == "quickstart"
    assert cfg.finetune.budgets == [1, 2, 5, 10, 20, 50, "all"]
    assert cfg.finetune.seeds == [0, 1, 2]
    assert cfg.finetune.arms == ["ssl-linear", "ssl-finetune", "scratch"]
    assert cfg.pretrain.num_workers == 2
    assert DEFAULT_CONFIG.name == "quickstart.yaml"


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(None, ["pretrain.epochs=5", "finetune.budgets=[5, 1, all]", "study=mine"])
    assert cfg.pretrain.epochs == 5
    assert cfg.finetune.budgets == [1, 5, "all"]  # sorted, 'all' last
    assert cfg.study == "mine"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pretrain.epoch=5", "unknown config key 'pretrain.epoch': did you mean 'pretrain.epochs'?"),
        ("finetun.steps=5", "unknown config key 'finetun': did you mean 'finetune'?"),
        ("pretrain.epochs=many", "config key 'pretrain.epochs': Input should be a valid integer"),
        ("finetune.arms=[ssl-linear, scratc]", "unknown arm 'scratc': did you mean 'scratch'?"),
        ("finetune.budgets=[0, 1]", "budgets are labels per class"),
        ("data.name=folder", "data.name=folder needs data.path=DIR"),
        ("pretrain.method=simsam", "config key 'pretrain.method'"),
    ],
)
def test_bad_values_give_one_line_with_the_fix(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text", ["pretrain.epochs", "=5", "pretrain..epochs=3", "a=[1, 2"])
def test_malformed_overrides_are_rejected(text):
    with pytest.raises(ConfigError, match="malformed override"):
        parse_override(text)


def test_missing_and_invalid_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


SECTIONS = ("data", "pretrain", "finetune")


def test_fingerprint_ignores_the_grid_but_not_the_recipe():
    base = load_config()
    more_seeds = load_config(None, ["finetune.seeds=[0, 1, 2, 3]", "finetune.budgets=[1]"])
    assert base.fingerprint(*SECTIONS) == load_config().fingerprint(*SECTIONS)
    assert StudyConfig().fingerprint(*SECTIONS) != base.fingerprint(*SECTIONS)
    assert more_seeds.fingerprint(*SECTIONS) == base.fingerprint(*SECTIONS)
    for changed in ["pretrain.epochs=7", "pretrain.options.simclr.temperature=0.3", "data.split_seed=1", "seed=1"]:
        assert load_config(None, [changed]).fingerprint(*SECTIONS) != base.fingerprint(*SECTIONS), changed


def test_fingerprint_ignores_what_changes_no_result():
    """A study run locally and then submitted (absolute storage path, other retries) resumes."""
    base = load_config().fingerprint(*SECTIONS)
    elsewhere = [
        "pretrain.storage_path=/shared/labelcurve-runs",
        "pretrain.checkpoint_every=3",
        "pretrain.max_failures=5",
        "pretrain.online_knn=0",
        "pretrain.model_name=my-backbone",
        "pretrain.augment_cpus=2",
        "pretrain.options.byol.momentum=0.9",  # a block of a method that is not chosen
    ]
    assert load_config(None, elsewhere).fingerprint(*SECTIONS) == base
    cifar = ["data.name=cifar10", "data.path=/data"]
    assert load_config(None, [*cifar, "data.download=true"]).fingerprint(*SECTIONS) == load_config(
        None, cifar
    ).fingerprint(*SECTIONS)


def test_every_method_is_one_override_away_on_the_default_config():
    for method in METHOD_OPTIONS:
        overrides = [f"pretrain.method={method}"] + (["pretrain.backbone=vit_tiny"] if method == "mae" else [])
        cfg = load_config(None, overrides)
        if method != "simclr":  # the quickstart sets simclr's options only
            assert cfg.pretrain.method_options == METHOD_OPTIONS[method](), method
    assert load_config().pretrain.method_options.temperature == 0.2  # the quickstart's simclr block


def test_method_options_are_checked_against_their_domain_before_compute():
    for override, fragment in [
        ("pretrain.options.simclr.temperature=0", "simclr option 'temperature': Input should be greater than 0"),
        ("pretrain.options.mae.mask_ratio=1.5", "mae option 'mask_ratio'"),
        ("pretrain.options.byol.momentum=2", "byol option 'momentum'"),
        ("pretrain.options.temperature=0.1", "options sit under their method's name"),
        ("pretrain.options.simcl={temperature: 0.1}", "did you mean 'simclr'?"),
    ]:
        with pytest.raises(ConfigError) as error:
            load_config(None, [override])
        assert fragment in str(error.value), override


def test_a_recipe_extends_its_base_and_states_only_the_difference(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "study: base\npretrain: {method: byol, epochs: 200, options: {byol: {hidden_dim: 4096, momentum: 0.99}}}\n"
    )
    (tmp_path / "cpu.yaml").write_text(
        "extends: base.yaml\nstudy: cpu\npretrain: {epochs: 5, options: {byol: {momentum: 0.9}}}\n"
    )
    cfg = load_config(tmp_path / "cpu.yaml")
    assert (cfg.study, cfg.pretrain.method, cfg.pretrain.epochs) == ("cpu", "byol", 5)
    assert cfg.pretrain.options == {"byol": {"hidden_dim": 4096, "momentum": 0.9}}
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="in a cycle"):
        load_config(tmp_path / "loop.yaml")


def test_every_shipped_config_is_valid():
    configs = sorted((DEFAULT_CONFIG.parent).rglob("*.yaml"))
    assert len(configs) >= 22
    for path in configs:
        cfg = load_config(path)
        assert cfg.pretrain.method in METHOD_OPTIONS, path
        assert set(cfg.pretrain.options) <= {cfg.pretrain.method}, path  # no recipe pins another method's options


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["pretrain.method=simclrr"], ["unknown method 'simclrr': did you mean 'simclr'?", "valid ones are", "mae"]),
        (["pretrain.backbone=resnet"], ["unknown backbone 'resnet'", "resnet18, resnet34, resnet50", "vit_small"]),
        (["pretrain.method=mae"], ["method mae needs one of the backbones vit_tiny, vit_small"]),
        (
            ["pretrain.options.simclr={tau: 0.1}"],
            ["unknown option 'tau' for method simclr", "temperature, projection_dim"],
        ),
        (["pretrain.method=byol", "pretrain.options.byol={momentum: high}"], ["option 'momentum'", "valid number"]),
    ],
)
def test_method_backbone_and_option_mistakes_name_the_valid_choices(overrides, fragments):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_backbones_refuse_image_sizes_they_cannot_take():
    from pretrain.backbone_specs import BackboneError, backbone_options

    assert backbone_options("resnet18", 16) == {"cifar_stem": True}
    assert backbone_options("resnet50", 224) == {"cifar_stem": False}
    assert backbone_options("vit_small", 224) == {"patch_size": 16}
    assert backbone_options("vit_tiny", 32) == {"patch_size": 4}
    with pytest.raises(BackboneError, match=r"set pretrain\.cifar_stem=true or data\.image_size=32"):
        backbone_options("resnet18", 16, cifar_stem=False)
    with pytest.raises(BackboneError, match="patch size 5 cannot tile 16 px images"):
        backbone_options("vit_tiny", 16, patch_size=5)


def test_study_names_cannot_leave_the_storage_path():
    with pytest.raises(ConfigError, match=r"study name '\.\./\.\./escape' may hold only letters, digits"):
        load_config(None, ["study=../../escape"])
    assert load_config(None, ["study=cifar10-cpu_v2.1"]).study == "cifar10-cpu_v2.1"


def test_job_env_carries_no_secret(monkeypatch):
    from cluster.jobs import job_env
    from cluster.tracking_server import redacted

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    env = job_env("http://10.0.0.5:5000")
    assert env == {"MLFLOW_TRACKING_URI": "http://10.0.0.5:5000", "RAY_AUTH_MODE": "token"}
    with pytest.raises(ConfigError, match=r"http://\*\*\*@host:5000 carries a password") as refused:
        job_env("http://user:hunter2@host:5000")
    assert "hunter2" not in str(refused.value)
    assert redacted("https://u:p@mlflow.example.com/x") == "https://***@mlflow.example.com/x"


def test_infinite_learning_rate_is_refused():
    with pytest.raises(ConfigError, match=r"config key 'pretrain\.lr'"):
        load_config(None, ["pretrain.lr=.inf"])


def _numeric_shape(annotation: Any) -> str | None:
    """'scalar', 'list' or 'dict' when a field (or its items or values) holds numbers, else None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numeric_shape(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        shapes = {_numeric_shape(arg) for arg in typing.get_args(annotation)} - {None}
        return shapes.pop() if shapes else None
    if origin is typing.Literal:
        return "scalar" if any(isinstance(v, int | float) for v in typing.get_args(annotation)) else None
    if origin is list and _numeric_shape(typing.get_args(annotation)[0]) == "scalar":
        return "list"
    if origin is dict and _numeric_shape(typing.get_args(annotation)[1]) == "scalar":
        return "dict"
    if annotation in (int, float):
        return "scalar"
    return None


def _numeric_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """Every numeric setting of ``model`` and its sections, as (dotted key, shape)."""
    found = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += _numeric_fields(field.annotation, f"{prefix}{name}.")
        elif shape := _numeric_shape(field.annotation):
            found.append((prefix + name, shape))
    return found


def _option_fields() -> list[tuple[str, str, str]]:
    """Every numeric option of every method: (method, option, shape)."""
    return [
        (method, name, shape) for method, options in METHOD_OPTIONS.items() for name, shape in _numeric_fields(options)
    ]


#: numeric settings where a negative value is legitimate: none (seeds feed numpy, which takes 0..2**32-1)
NEGATIVE_ALLOWED: set[str] = set()
BAD_NUMBERS = {"inf": ".inf", "-inf": "-.inf", "nan": ".nan", "negative": "-1"}


def _written(shape: str, value: str) -> str:
    return {"scalar": value, "list": f"[{value}]", "dict": f"{{CPU: {value}}}"}[shape]


def test_the_walk_finds_the_numeric_settings():
    keys = {key for key, _ in _numeric_fields(StudyConfig)}
    assert {"seed", "data.test_fraction", "pretrain.lr", "pretrain.resources_per_worker", "finetune.epochs"} <= keys
    assert {"finetune.lr", "finetune.linear_c", "finetune.seeds", "finetune.budgets"} <= keys
    assert len(keys) >= 35
    assert ("vicreg", "lambda_param", "scalar") in _option_fields()


@pytest.mark.parametrize(("key", "shape"), _numeric_fields(StudyConfig))
@pytest.mark.parametrize("bad", list(BAD_NUMBERS))
def test_every_numeric_setting_refuses_infinite_nan_and_negative(key, shape, bad):
    if bad == "negative" and key in NEGATIVE_ALLOWED:
        return
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"{key}={_written(shape, BAD_NUMBERS[bad])}"])
    message = str(error.value)
    assert f"config key '{key}" in message and "\n" not in message, (bad, message)


@pytest.mark.parametrize(("method", "option", "shape"), _option_fields())
@pytest.mark.parametrize("bad", list(BAD_NUMBERS))
def test_every_method_option_refuses_infinite_nan_and_negative(method, option, shape, bad):
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"pretrain.options.{method}.{option}={_written(shape, BAD_NUMBERS[bad])}"])
    message = str(error.value)
    assert f"{method} option '{option}'" in message and "\n" not in message, (bad, message)


@pytest.mark.parametrize(
    "override",
    [
        "finetune.epochs=1e9",
        "finetune.lr=1e6",
        "finetune.linear_c=1e300",
        "pretrain.weight_decay=1e6",
        "seed=4294967296",
    ],
)
def test_absurdly_large_settings_are_refused(override):
    with pytest.raises(ConfigError, match=f"config key '{override.partition('=')[0]}"):
        load_config(None, [override])


def test_cli_refuses_an_infinite_epoch_count_in_one_line_before_ray(labelcurve, tmp_path):
    started = time.monotonic()
    result = labelcurve("run", "finetune.epochs=.inf", timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "Error: config key 'finetune.epochs': Input should be a finite number"
    ], result.stderr
    assert time.monotonic() - started < 20  # the config check, not a study: no Ray, no store
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "labelcurve-runs").exists()
