"""The study configuration: a typed schema, YAML loading and ``key=value`` overrides.

Every mistake a user can make in a config (a typo in a key, a wrong type, a malformed override)
becomes a :class:`ConfigError` with one line that names the key and the fix, raised before any
compute starts.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from finetune.arms import ARMS, BY_NAME, DEFAULT_ARMS, TRANSFER
from finetune.budgets import Budget
from pretrain.backbone_specs import BACKBONE_FAMILIES
from pretrain.errors import LabelcurveError
from pretrain.method_options import METHOD_OPTIONS, MethodOptions, chosen_options

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


class ConfigError(LabelcurveError, ValueError):
    """A config problem, phrased as one line for the user."""


#: a seed: numpy, scikit-learn and Lightning take 0..2**32-1, and pretrain.repeats adds up to 15
Seed = Annotated[int, Field(ge=0, lt=2**31)]


class _Section(BaseModel):
    """Unknown keys are errors, and no float may be infinite or NaN (``.inf`` is valid YAML): each
    setting's own range is checked by its field."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    """Where images come from and how the fixed test split is drawn."""

    name: Literal["digits", "folder", "cifar10", "cifar100", "stl10"] = "digits"
    path: str | None = Field(
        None,
        description="an ImageFolder root (optionally with split folders), a CSV of path,label, or a torchvision root",
    )
    download: bool = Field(False, description="torchvision datasets: download into data.path when missing")
    unlabeled_path: str | None = None
    classes: list[str] | None = Field(None, description="keep only these classes (e.g. digits ['0','1'])")
    image_size: int | None = Field(None, ge=4, le=1024)
    channels: Literal[1, 3] | None = None
    validation: Literal["pool", "test"] | None = Field(
        None, description="where a val/valid/validation split goes: pool (the default) or test"
    )
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    split_seed: Seed = 0
    max_per_class: int | None = Field(None, ge=1, description="cap on the labeled pool per class")
    max_test_per_class: int | None = Field(None, ge=1, description="cap on the test split per class")
    max_unlabeled: int | None = Field(None, ge=1)
    # the three below default to None (given, 10, none): a new setting must not change existing studies' fingerprints
    test_split: Literal["given", "resplit"] | None = Field(
        None,
        description="given (the default): keep the test split as found; resplit: pool the labeled and test images "
        "left after the duplicate guard and draw a stratified test split of data.test_fraction with data.split_seed",
    )
    min_test_per_class: int | None = Field(
        None, ge=0, description="fewest test images a class may have after the duplicate guard (default 10; 0: any)"
    )
    ignore: list[str] | None = Field(
        None, description="folders directly under data.path to skip, e.g. [raw] (a copy beside the split folders)"
    )
    max_bad_fraction: float = Field(
        0.01, ge=0, le=1, description="pretraining stops when more of its images than this fail to decode"
    )
    stats_sample: int = Field(10_000, ge=1, description="images sampled for the normalization mean and std")

    @model_validator(mode="after")
    def _path_matches_name(self) -> DataConfig:
        if self.name == "folder" and not self.path:
            raise ValueError("data.name=folder needs data.path=DIR (an ImageFolder root)")
        if self.name not in ("digits", "folder") and not self.path:
            raise ValueError(f"data.name={self.name} needs data.path=DIR (where the dataset files are or go)")
        if self.name == "digits" and self.path:
            raise ValueError("data.path is set but data.name=digits: add data.name=folder")
        if self.ignore and self.name != "folder":
            raise ValueError(f"data.ignore skips folders of an ImageFolder root, not of {self.name}: remove it")
        if any(not name.strip() or "/" in name for name in self.ignore or []):
            raise ValueError("data.ignore holds folder names directly under data.path, e.g. [raw], not paths")
        return self


class PretrainConfig(_Section):
    """Self-supervised pretraining; ``lr`` is for a global batch of 256 and scaled linearly."""

    method: str = Field("simclr", description="one of pretrain.method_options.METHOD_OPTIONS")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="each method's own settings under its name, e.g. {simclr: {temperature: 0.2}}; "
        "only the chosen method's block is used",
    )
    backbone: str = Field("small_cnn", description="one of pretrain.backbone_specs.BACKBONE_FAMILIES")
    cifar_stem: bool | None = Field(None, description="ResNets: 3x3 stem without max-pool; default: images <= 64 px")
    patch_size: int | None = Field(None, ge=1, description="ViTs; default: the largest of 16/8/4/2 giving 8x8 patches")
    epochs: int = Field(60, ge=1, le=100_000)
    repeats: int = Field(
        1, ge=1, le=16, description="pretrainings with seeds seed..seed+N-1; labeled seed s starts from s mod N"
    )
    batch_size: int = Field(128, ge=2, le=1 << 16, description="per worker")
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float = Field(4e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    warmup_epochs: int = Field(2, ge=0, le=100_000)
    min_scale: float = Field(0.4, gt=0, le=1)
    rotation_degrees: float = Field(15.0, ge=0, le=180)
    horizontal_flip: float = Field(0.0, ge=0, le=1)
    color_jitter: float = Field(0.5, ge=0, le=1)
    color_jitter_strength: float | None = Field(None, gt=0, le=4, description="default: the method's transform default")
    num_workers: int = Field(2, ge=1, le=10_000)
    use_gpu: bool = False
    resources_per_worker: dict[str, Annotated[float, Field(ge=0)]] | None = None
    max_failures: int = Field(2, ge=0, le=1000, description="worker-group restarts from the last checkpoint")
    sync_batchnorm: bool = Field(True, description="across GPU workers (torch has no CPU SyncBatchNorm)")
    gather_distributed: bool = Field(True, description="contrast against the negatives of every worker")
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed"] = Field(
        "auto", description="auto: 16-bit mixed precision on GPU, 32-bit on CPU"
    )
    checkpoint_every: int = Field(10, ge=1, description="epochs between checkpoints")
    online_knn: int = Field(
        1000, ge=0, description="labeled pool images for the kNN accuracy logged every epoch (0: off)"
    )
    input: Literal["auto", "stream", "local"] = Field(
        "auto",
        description="stream: decode+augment in Ray Data tasks; local: each worker its own shard (kept decoded "
        "up to 20,000 images and 1 GiB); auto: stream to GPU workers, and to CPU workers that leave a CPU each "
        "to Ray Data when the pool is larger than that; local otherwise",
    )
    augment_cpus: float = Field(
        0.5, gt=0, le=64, description="CPUs each Ray Data decode+augment task reserves (and a CPU worker)"
    )
    channels_last: bool = Field(True, description="channels-last memory format on GPU (faster convolutions)")
    storage_path: str = "labelcurve-runs"
    model_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="registry name; default METHOD-BACKBONE-DATASET"
    )

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        return _known_name(method, METHOD_OPTIONS, "method")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, backbone: str) -> str:
        return _known_name(backbone, BACKBONE_FAMILIES, "backbone")

    @field_validator("options")
    @classmethod
    def _options_per_method(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Every block the user wrote is checked against its own method, so a switch of
        ``pretrain.method`` needs no other change and a typo in any block is still caught."""
        for method, block in options.items():
            if method in METHOD_OPTIONS and not isinstance(block, dict):
                raise ValueError(f"'{method}' must map option names to values, e.g. {{temperature: 0.2}}")
            if method not in METHOD_OPTIONS:
                hint = difflib.get_close_matches(method, METHOD_OPTIONS, n=1)
                fix = (
                    f"did you mean '{hint[0]}'?"
                    if hint
                    else f"options sit under their method's name, e.g. pretrain.options.simclr.{method}=..."
                )
                raise ValueError(f"'{method}' is not a method's block of options: {fix}")
            try:
                METHOD_OPTIONS[method].model_validate(block)
            except ValidationError as error:
                first = error.errors()[0]
                key = ".".join(str(part) for part in first["loc"])
                if first["type"] == "extra_forbidden":
                    valid = ", ".join(METHOD_OPTIONS[method].model_fields)
                    raise ValueError(f"unknown option '{key}' for method {method}: valid options are {valid}") from None
                raise ValueError(f"{method} option '{key}': {first['msg']}") from None
        return options

    @model_validator(mode="after")
    def _method_fits(self) -> PretrainConfig:
        families = METHOD_OPTIONS[self.method].families
        if families and BACKBONE_FAMILIES[self.backbone] not in families:
            fitting = [name for name, family in BACKBONE_FAMILIES.items() if family in families]
            raise ValueError(f"method {self.method} needs one of the backbones {', '.join(fitting)}")
        return self

    @property
    def method_options(self) -> MethodOptions:
        """The chosen method's options: its block, the rest at the method's defaults."""
        return chosen_options(self.method, self.options)


class FinetuneConfig(_Section):
    """The grid of labeled runs: arms x per-class budgets x seeds, and their shared schedule."""

    arms: list[str] = Field(default_factory=lambda: list(DEFAULT_ARMS))
    budgets: list[Budget] = Field(default_factory=lambda: [1, 2, 5, 10, 20, 50, "all"])
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2])
    steps: int = Field(150, ge=1, le=10_000_000, description="the fewest optimizer steps of a fine-tuning run")
    epochs: float = Field(10, ge=0, le=10_000, description="passes over the labeled subset, when that takes more steps")
    max_steps: int = Field(1000, ge=1, le=10_000_000, description="the most optimizer steps of a fine-tuning run")
    batch_size: int = Field(64, ge=1, le=1 << 16)
    lr: float = Field(3e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    linear_c: float = Field(1.0, gt=0, le=1e6, description="inverse L2 strength of the linear probe")
    init: str | None = Field(
        None, description="backbone of the transfer arms: models:/NAME@ALIAS, runs:/ID or a folder"
    )

    @model_validator(mode="after")
    def _steps_in_order(self) -> FinetuneConfig:
        if self.max_steps < self.steps:
            raise ValueError(f"finetune.max_steps ({self.max_steps}) is below finetune.steps ({self.steps}): raise it")
        return self

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, arms: list[str]) -> list[str]:
        for arm in arms:
            if arm not in ARMS:
                hint = difflib.get_close_matches(arm, ARMS, n=1)
                fix = f"did you mean '{hint[0]}'?" if hint else f"choose from {', '.join(ARMS)}"
                raise ValueError(f"unknown arm '{arm}': {fix}")
        if not arms:
            raise ValueError("at least one arm is needed")
        return arms

    @model_validator(mode="after")
    def _transfer_needs_init(self) -> FinetuneConfig:
        transfer = [a for a in self.arms if BY_NAME[a].start == TRANSFER]
        if transfer and not self.init:
            raise ValueError(f"arm '{transfer[0]}' needs finetune.init=models:/NAME@ALIAS (a pretrained backbone)")
        if self.init and not transfer:
            raise ValueError(
                "finetune.init is set but no arm uses it: add transfer-linear or transfer-finetune to arms"
            )
        return self

    @field_validator("budgets")
    @classmethod
    def _positive_budgets(cls, budgets: list[Budget]) -> list[Budget]:
        if not budgets:
            raise ValueError("at least one budget is needed")
        if any(b != "all" and b < 1 for b in budgets):
            raise ValueError("budgets are labels per class: whole numbers >= 1 or 'all'")
        return sorted(set(budgets), key=lambda b: float("inf") if b == "all" else b)

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("at least one seed is needed")
        return sorted(set(seeds))


class RayConfig(_Section):
    address: str | None = None


class StudyConfig(_Section):
    """One study: a name (the MLflow experiment) and its sections."""

    study: str = Field("quickstart", description="the MLflow experiment; also names folders under storage_path")
    seed: Seed = 0
    data: DataConfig = Field(default_factory=DataConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("study")
    @classmethod
    def _safe_study_name(cls, study: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", study):
            raise ValueError(
                f"study name '{study}' may hold only letters, digits, '_', '.' and '-' (at most 100, "
                "starting with a letter or digit): it names folders under pretrain.storage_path"
            )
        return study

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the settings that change results; the grid lists do not, nor do
        where and how often things are stored, retried, monitored or named
        (:data:`NOT_IN_FINGERPRINT`), nor the option blocks of methods not chosen."""
        return _digest(self._settings(*sections))

    def pretraining_fingerprint(self, data_digest: str, repeat: int = 0) -> str:
        """What makes two pretrainings the same: the data (settings and manifest digest), the
        pretraining settings and the pretraining's own seed (the study seed + ``repeat``). The one
        rule for "the same pretraining": it names the Ray Train run and tags the pretraining run
        and its model version, so that a study that differs only in fine-tuning, or in the number
        of repeats, reuses a finished pretraining instead of registering its weights again."""
        dump = self._settings("data", "pretrain")
        dump["pretrain"].pop("repeats", None)
        dump.update(seed=self.seed + repeat, data_digest=data_digest)
        return _digest(dump)

    def _settings(self, *sections: str) -> dict[str, Any]:
        """The settings of ``sections`` (and the seed) that change results, as plain JSON."""
        # exclude_none: a new optional setting (default None) must not orphan existing studies
        dump = self.model_dump(mode="json", include=set(sections) | {"seed"}, exclude_none=True)
        for section, keys in NOT_IN_FINGERPRINT.items():
            for key in keys:
                dump.get(section, {}).pop(key, None)
        if "pretrain" in dump:
            dump["pretrain"]["options"] = self.pretrain.options.get(self.pretrain.method, {})
        return dump


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


#: settings that change no result: a study run locally and then submitted to a cluster (which
#: needs an absolute storage_path) resumes instead of pretraining again
NOT_IN_FINGERPRINT = {
    "data": ("download",),
    "pretrain": (
        "storage_path",
        "checkpoint_every",
        "max_failures",
        "online_knn",
        "model_name",
        "augment_cpus",
        "resources_per_worker",
    ),
    "finetune": ("arms", "budgets", "seeds"),
}


def _known_name(name: str, known: dict, what: str) -> str:
    if name in known:
        return name
    hint = difflib.get_close_matches(name, known, n=1)
    guess = f"did you mean '{hint[0]}'? " if hint else ""
    raise ValueError(f"unknown {what} '{name}': {guess}valid ones are {', '.join(known)}")


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += _known_keys(sub, prefix + name + ".")
    return keys


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        hint = difflib.get_close_matches(key, _known_keys(StudyConfig), n=1, cutoff=0.5)
        fix = f"did you mean '{hint[0]}'?" if hint else "remove it"
        return f"unknown config key '{key}': {fix}"
    message = error["msg"].removeprefix("Value error, ")
    return f"config key '{key}': {message}" if key else message


def parse_override(text: str) -> tuple[list[str], Any]:
    """``pretrain.epochs=5`` -> (['pretrain', 'epochs'], 5); values are read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"malformed override '{text}': write key=value, e.g. pretrain.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"malformed override '{text}': the value is not valid YAML") from None
    return key.strip().split("."), value


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both else value
    return merged


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict. ``extends: other.yaml`` (or a list, merged in order; paths relative
    to the file) is read first and overridden key by key, so a variant states only what differs."""
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found: pass an existing YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        line = getattr(getattr(error, "problem_mark", None), "line", -1) + 1
        raise ConfigError(f"config file '{path}' is not valid YAML (line {line}): fix it") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys to values")
    parents = raw.pop("extends", None)
    if parents is None:
        return raw
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        base = (path.parent / str(parent)).resolve()
        if base in seen or base == path.resolve():
            raise ConfigError(f"config file '{path}' extends '{parent}' in a cycle: remove one 'extends'")
        merged = _merge(merged, _read_yaml(base, (*seen, path.resolve())))
    return _merge(merged, raw)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> StudyConfig:
    """Read a YAML config (default: configs/quickstart.yaml), apply overrides, validate."""
    if path is None and not DEFAULT_CONFIG.is_file():
        raw: Any = {}  # installed without the repo's configs/: the schema defaults are the quickstart
    else:
        raw = _read_yaml(Path(path) if path else DEFAULT_CONFIG)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for part in keys[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is a value, not a section")
            node = child
        node[keys[-1]] = value
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error.errors()[0])) from None
