"""TrainConfig: every knob of a training run, flat and typed, with its default in one place.

The study layer searches over these fields by name, and a study's best configuration is written
back as a YAML of these fields, so `python -m gan.train --config best_config.yaml` re-runs it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gan.errors import ConfigError

Arch = Literal["mlp", "dcgan"]
LossName = Literal["bce", "ns", "hinge", "lsgan", "wgan"]
NAMED_DATASETS = ("mnist", "fashion_mnist", "cifar10", "stacked_mnist")
MAX_SEED = 2**32 - 1  # what Optuna, numpy and torch all accept
MAX_YAML_BYTES = 1 << 20
# An alias is a reference, cheap to load, but whatever walks the result walks it again: ten
# nested levels of ten aliases each are 10^10 nodes to validate. Configs need few if any.
MAX_YAML_ALIASES = 16
MAX_YAML_DEPTH = 50


class TrainConfig(BaseModel):
    """Defaults are the seed tutorials' reference values (Radford et al. 2015; pytorch/examples)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # data
    dataset: str = "mnist"  # mnist | fashion_mnist | cifar10 | stacked_mnist | folder:<path>
    image_size: Literal[28, 32, 64] = 32
    channels: Literal[1, 3] = 1
    data_dir: str | None = None  # where torchvision datasets live; default: the cache directory
    # the training split's first train_n images (null: all of it): a data-size study, or a
    # tutorial's smaller split (TensorFlow's read_data_sets keeps 55 000 of MNIST's 60 000)
    train_n: int | None = Field(None, ge=2)

    # architecture: width is pytorch/examples' ngf = ndf
    arch: Arch = "dcgan"
    width: int = Field(32, ge=1, le=1024)
    latent_dim: int = Field(100, ge=1, le=4096)
    latent_dist: Literal["normal", "uniform", "uniform01"] = "normal"  # N(0,1), U(-1,1), U[0,1)
    # the mlp's hidden layers as listed at width 64 (width scales them); BatchNorm in G and
    # d_norm in D follow every hidden layer but the first
    mlp_g_layers: tuple[Annotated[int, Field(ge=1, le=65536)], ...] = Field(
        (128, 256, 512, 1024), min_length=1, max_length=16)
    mlp_d_layers: tuple[Annotated[int, Field(ge=1, le=65536)], ...] = Field(
        (512, 256), min_length=1, max_length=16)
    # hidden activations; auto: ReLU in the DCGAN generator, LeakyReLU 0.2 everywhere else
    g_activation: Literal["auto", "relu", "leaky_relu"] = "auto"
    d_activation: Literal["auto", "relu", "leaky_relu"] = "auto"
    # weights: auto is dcgan's N(0, 0.02) for dcgan and PyTorch's default for mlp; bias_init sets
    # every bias to one value after it (null: the initialisation's own)
    init: Literal["auto", "dcgan", "xavier", "default"] = "auto"
    bias_init: float | None = Field(None, ge=-10, le=10)
    conv_bias: bool = False  # biases in the dcgan's conv layers (the DCGAN paper drops them)
    # the generator's output: tanh with data in [-1, 1], or sigmoid with data in [0, 1]
    output: Literal["tanh", "sigmoid"] = "tanh"

    # objective
    loss: LossName = "ns"
    gp_weight: float = Field(10.0, ge=0)  # WGAN-GP penalty weight; used by loss "wgan" only
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # one-sided: real target = 1 - this

    # discriminator regularisation: its layers' normalisation (auto: the tutorials' choice, batch
    # for dcgan, none for mlp and under WGAN-GP), spectral normalisation of its weights (Miyato et
    # al. 2018), and R1, a penalty on its gradient at real data (Mescheder et al. 2018), taken
    # every r1_every discriminator updates with its weight scaled to match (Karras et al. 2020)
    d_norm: Literal["auto", "batch", "layer", "instance", "none"] = "auto"
    spectral_norm: bool = False
    r1_weight: float = Field(0.0, ge=0, le=1e4)
    r1_every: int = Field(1, ge=1, le=1000)

    # optimisation: Adam per network
    lr_g: float = Field(2e-4, gt=0, le=1)
    lr_d: float = Field(2e-4, gt=0, le=1)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    # the rates' schedule over the run's length: constant (the tutorials), or annealed to zero
    # (linear, cosine); a resumed or PBT-perturbed run follows it from where it is
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    batch_size: int = Field(64, ge=2, le=65536)
    d_steps: int = Field(1, ge=1, le=100)  # discriminator updates per iteration
    g_steps: int = Field(1, ge=1, le=100)  # generator updates per iteration
    # The unit of `steps` and of every interval below: generator updates (a resumed run repeats
    # itself exactly), images (updates x batch_size: batch sizes compared at equal data), or
    # seconds of training, evaluation excluded (configurations compared at equal compute; a
    # run's length then depends on the machine it runs on).
    unit: Literal["updates", "images", "seconds"] = "updates"
    steps: int | None = Field(2000, ge=1)  # length of training, in `unit`; null with epochs
    # or the length as the tutorials count it, in passes over the training split: one epoch is
    # len(split) / batch_size real batches, one per discriminator update; converted to generator
    # updates when the data is loaded (the run logs the conversion)
    epochs: float | None = Field(None, gt=0, le=1e5)
    # an exponential moving average of G's weights is the generator evaluated, sampled and saved
    # (Yazici et al. 2019); 0 = off, the raw generator
    ema_decay: float = Field(0.0, ge=0, lt=1)

    # bookkeeping, all in `unit`
    seed: int = Field(0, ge=0, le=MAX_SEED)
    log_every: int = Field(50, ge=1)
    sample_every: int = Field(250, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    # also keep every checkpoint_every's G and D as checkpoints/step_NNNNNN.pt, as the
    # tutorials save theirs per epoch (the generator in each samples with gan.sample)
    keep_checkpoints: bool = False

    # evaluation: eval_n samples every eval_every steps (what early stopping sees), final_n for the
    # best checkpoint at the end (what is reported and compared); eval_every 0 turns both off
    eval_every: int = Field(500, ge=0)
    eval_n: int = Field(2000, ge=10, le=100_000)
    final_n: int = Field(10_000, ge=10, le=100_000)
    # the metrics' feature space: a labelled dataset's classifier, or a label-free encoder
    # trained on the data itself (folders); auto picks by whether the dataset has labels
    feature_net: Literal["auto", "classifier", "contrastive", "inception"] = "auto"
    inception_weights: str | None = None  # the FID Inception file, for feature_net inception

    # runtime
    threads: int = Field(0, ge=0)  # torch threads; 0 = every core this process may use
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bf16 autocast; CUDA only
    channels_last: bool = False  # memory format for conv nets; CUDA only

    # fault injection, for testing what happens around a run: at generator update `fault_step`,
    # "raise" raises InjectedFault (a crash), "nan" makes the discriminator's loss NaN
    fault: Literal["none", "raise", "nan"] = "none"
    fault_step: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.dataset not in NAMED_DATASETS and not self.dataset.startswith("folder:"):
            raise ValueError(
                f"dataset: unknown dataset {self.dataset!r}; "
                f"expected one of {', '.join(NAMED_DATASETS)} or folder:<path>"
            )
        if (self.inception_weights is None) == (self.feature_net == "inception"):
            raise ValueError("inception_weights: the FID Inception weights file is needed by "
                             "feature_net: inception, and by it only")
        if self.dataset == "stacked_mnist" and self.channels != 3:
            raise ValueError("channels: stacked_mnist is a colour dataset (a digit per channel); "
                             "set channels: 3")
        if self.label_smoothing > 0 and self.loss in ("hinge", "wgan"):
            raise ValueError(f"label_smoothing: has no meaning for loss {self.loss!r}")
        if self.d_norm == "instance" and self.arch == "mlp":
            raise ValueError("d_norm: instance normalises feature maps; the mlp discriminator has "
                             "none (use batch, layer or none)")
        if self.d_norm == "batch" and self.loss == "wgan":
            raise ValueError("d_norm: batch couples the samples of a batch, which WGAN-GP's "
                             "per-sample penalty forbids (use layer, instance or none)")
        if self.arch != "mlp":
            for key in ("mlp_g_layers", "mlp_d_layers"):
                if getattr(self, key) != type(self).model_fields[key].default:
                    raise ValueError(f"{key}: the mlp's hidden layers; arch {self.arch!r} has none")
        if self.conv_bias and self.arch != "dcgan":
            raise ValueError(f"conv_bias: arch {self.arch!r} has no conv layers")
        if self.epochs is not None:
            if "steps" in self.model_fields_set and self.steps is not None:
                raise ValueError("epochs: the length is epochs or steps, not both")
            if self.unit != "updates":
                raise ValueError(f"epochs: a length in passes over the data; unit {self.unit!r} "
                                 "has its own (use steps)")
            # the length is the epochs; steps reads null wherever this config is written
            object.__setattr__(self, "steps", None)
        elif self.steps is None:
            raise ValueError("steps: null is only for a length in epochs; set steps or epochs")
        if self.r1_every > 1 and self.r1_weight == 0:
            raise ValueError("r1_every: has no effect without r1_weight")
        if self.checkpoint_every % self.log_every:
            # A resumed run must restart on a log boundary to log the same averages.
            raise ValueError("checkpoint_every: must be a multiple of log_every")
        if self.eval_every % self.log_every:
            raise ValueError("eval_every: must be a multiple of log_every")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device: unknown device {self.device!r}")
        return self

    @property
    def torch_threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))


def one_line_error(err: ValidationError, source: str, tags: frozenset[str] = frozenset()) -> str:
    """A pydantic error as one line: `source: key.path: message; ...`. `tags` are the tags of
    tagged unions, which pydantic puts in the path but the file does not have."""
    parts = []
    for e in err.errors():
        key = ".".join(_key(p) for p in e["loc"] if p not in tags)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{key}: {msg}" if key else msg)
    return f"{source}: " + "; ".join(parts).replace("\n", "\\n")


def _key(part: str | int) -> str:
    """A key as written in the file, quoted when it would not read as one (spaces, newlines)."""
    text = str(part)
    return text if text and text.isprintable() and " " not in text else repr(text)


def make_config(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate a mapping of TrainConfig fields; errors name the source and the key."""
    try:
        return TrainConfig(**values)
    except ValidationError as err:
        raise ConfigError(one_line_error(err, source)) from None
    except TypeError as err:  # non-string keys, e.g. `1: 2` in a YAML file
        raise ConfigError(f"{source}: {err}") from None


class BoundedSafeLoader(yaml.SafeLoader):
    """safe_load with the number of aliases and the nesting depth bounded."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.aliases, self.depth = 0, 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_YAML_ALIASES} aliases", mark)
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, read safely and bounded in size."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES} bytes")
    try:
        data = yaml.load(raw, Loader=BoundedSafeLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {kind}")
    return data


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings from the command line, each value read as a YAML scalar, as it would
    be in a config file: `32` an int, `1e-3` a float, `true` a bool, `null` None; a flat list
    such as `[128, 256]` for the fields that are lists."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair}: expected key=value")
        try:
            parsed = yaml.load(value.strip() or "''", Loader=BoundedSafeLoader)  # noqa: S506
        except yaml.YAMLError:
            parsed = None
        nested = isinstance(parsed, dict) or (
            isinstance(parsed, list) and any(isinstance(v, dict | list) for v in parsed))
        if nested or (parsed is None and value.strip() not in ("null", "~", "Null", "NULL")):
            raise ConfigError(f"--set {pair}: expected one YAML value (a number, word, true, "
                              "null or a quoted string) or a flat list, not a mapping")
        out[key.strip()] = parsed
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file's values, then `--set key=value` overrides."""
    values = read_yaml(path) if path else {}
    sets = parse_overrides(list(overrides))
    source = f"{path}" if path else "config"
    if sets:
        source += " with --set " + " ".join(sets)
    return make_config({**values, **sets}, source)
