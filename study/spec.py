"""The study YAML, validated into a typed StudySpec before anything starts.

Every hyperparameter is named as the TrainConfig field it sets, in `space` (searched) or `fixed`
(held). Fields the study itself controls (length, evaluation cadence, seeds, threads, device) are
set from `budget`, `seed` and `resources` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gan.config import (
    MAX_SEED,
    NAMED_DATASETS,
    TrainConfig,
    make_config,
    one_line_error,
    read_yaml,
)
from gan.errors import ConfigError
from study.reported import OBJECTIVES, QUALITY
from study.runnable import check_runnable

STUDY_CONTROLLED = {"unit", "steps", "epochs", "eval_every", "seed", "threads", "device",
                    "log_every", "checkpoint_every", "sample_every"}
Unit = Literal["updates", "images", "seconds"]
# What a trial's reports measure its progress by, per budget unit: ASHA's time attribute.
PROGRESS = {"updates": "step", "images": "images", "seconds": "train_s"}
UNIT_NAMES = {"updates": "generator updates", "images": "images", "seconds": "s of training"}


def length_text(n: float, unit: str) -> str:
    """A length in a budget unit, for people: '600 generator updates', '120 s of training'."""
    return f"{n:g} {UNIT_NAMES[unit]}"
Scalar = str | int | float | bool


class Strict(BaseModel):
    # strict: `trials: true` or `steps: "40"` is a mistake, not a 1 or a 40
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Param(Strict):
    # `when: {loss: wgan}` or `when: {arch: [dcgan]}`: sampled only when an earlier parameter
    # took one of these values (a width only for dcgan, a penalty weight only for wgan)
    when: dict[str, Scalar | list[Scalar]] | None = None


class _RangeParam(_Param):
    """A numeric range; FloatParam and IntParam give low and high their types."""

    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> _RangeParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


class FloatParam(_RangeParam):
    type: Literal["float"]
    low: float
    high: float


class IntParam(_RangeParam):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Budget(Strict):
    trials: int = Field(ge=1, le=10_000)
    # the unit of steps, eval_every, ASHA's grace_period and final.steps: generator updates
    # (reproducible decisions), images (updates x batch_size) or seconds of training
    unit: Unit = "updates"
    steps: int = Field(ge=1)  # per trial, in `unit`
    eval_every: int = Field(ge=1)  # in `unit`; what early stopping sees
    time_limit_s: float | None = Field(None, gt=0)  # wall clock for the search phase


class Asha(Strict):
    type: Literal["asha"]
    grace_period: int = Field(ge=1)  # budget.unit before a trial can be stopped
    reduction_factor: float = Field(3, gt=1)


class Pbt(Strict):
    type: Literal["pbt"]
    perturbation_interval: int = Field(ge=1)  # generator updates between exploits
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    mutations: list[Literal["lr_g", "lr_d", "beta1", "beta2"]] = ["lr_g", "lr_d"]


class NoScheduler(Strict):
    type: Literal["none"]


class Resources(Strict):
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class Confirm(Strict):
    top_k: int = Field(ge=1, le=20)
    seeds: int = Field(ge=2, le=20)


class Final(Strict):
    """The study's product: its chosen configuration trained once more, longer, with the
    resources of a whole node (or one GPU). The verdict stays the confirmation's."""

    steps: int = Field(ge=1)  # in budget.unit; at least the search's
    eval_every: int = Field(ge=1)
    cpu: float | None = Field(None, gt=0)  # default: every CPU of the largest node
    gpu: float | None = Field(None, ge=0)  # default: 1 where trials use GPUs, else 0


class Tpe(Strict):
    type: Literal["tpe"]
    # Random trials before TPE models the space (Optuna's default). A small budget spends a
    # large share of its trials here: search_efficiency.py measures what fewer buys.
    startup_trials: int = Field(10, ge=1)

    @property
    def label(self) -> str:
        return f"tpe ({self.startup_trials} random start-up trials)"


class RandomSearch(Strict):
    type: Literal["random"]

    @property
    def label(self) -> str:
        return "random"


class BaselineFile(Strict):
    """A TrainConfig file as the study's baseline: its values, read once when the spec is
    loaded, travel with the spec (a resumed study or a report needs no file)."""

    path: str
    values: dict[str, Any]

    @model_validator(mode="after")
    def _valid(self) -> BaselineFile:
        try:
            make_config(self.values, self.path)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return self

    @property
    def trained_values(self) -> dict[str, Any]:
        """The file's hyperparameters: what the study sets itself (length, evaluation, seed,
        threads, dataset) is the study's."""
        return {k: v for k, v in self.values.items()
                if k not in STUDY_CONTROLLED and k != "dataset"}


UNION_TAGS = frozenset({"float", "int", "categorical", "asha", "pbt", "none", "tpe", "random"})


class StudySpec(Strict):
    # one safe path component: the study directory and the MLflow experiment are named by it
    name: str = Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$", max_length=100)
    dataset: str = "mnist"
    metric: Literal[tuple(QUALITY)] = "fid"  # type: ignore[valid-type]
    mode: Literal["min", "max"] | None = None  # default: the metric's natural direction
    # several objectives (quality first, then e.g. train_s): Optuna searches their Pareto front,
    # ASHA and the confirmation decide on the first, each objective keeps its natural direction
    objectives: list[Literal[tuple(OBJECTIVES)]] | None = None  # type: ignore[valid-type]
    # the confirmation's seeds (seed + 1000 + i) and extensions' samplers (seed + k) stay in range
    seed: int = Field(0, ge=0, le=MAX_SEED - 2000)
    budget: Budget
    scheduler: Annotated[Asha | Pbt | NoScheduler, Field(discriminator="type")] = NoScheduler(
        type="none")
    searcher: Annotated[Tpe | RandomSearch, Field(discriminator="type")] = Tpe(type="tpe")
    resources: Resources = Resources()
    max_concurrent: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0, le=10)  # retries of a crashed trial, from its checkpoint
    confirm: Confirm | None = None
    final: Final | None = None
    # the configuration enqueued first and confirmed beside the best: the seed tutorials'
    # reference values, or a TrainConfig file (`baseline: configs/mlp_mnist.yaml`) whose values
    # every trial starts from
    baseline: BaselineFile | None = None
    fixed: dict[str, Any] = {}
    space: dict[str, Param] = Field(min_length=1)

    @property
    def baseline_name(self) -> str:
        return self.baseline.path if self.baseline else "the reference configuration"

    @field_validator("baseline", mode="before")
    @classmethod
    def _baseline_file(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return {"path": value, "values": read_yaml(value)}
        except ConfigError as err:
            raise ValueError(str(err)) from None

    @property
    def direction(self) -> str:
        return self.mode or QUALITY[self.metric]

    @property
    def targets(self) -> list[str]:
        """What the search optimises: the objectives, or the one metric."""
        return list(self.objectives) if self.objectives else [self.metric]

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives] if self.objectives else [self.direction]

    @model_validator(mode="after")
    def _objectives_lead_with_the_metric(self) -> StudySpec:
        if self.objectives is None:
            return self
        first = self.objectives[0]
        if len(self.objectives) < 2:
            raise ValueError(f"objectives: one objective is a metric; write metric: {first}")
        if len(set(self.objectives)) < len(self.objectives):
            raise ValueError("objectives: each objective once")
        if first not in QUALITY:
            raise ValueError(f"objectives: the first objective is the quality ASHA and the "
                             f"confirmation decide on: one of {', '.join(QUALITY)}, not {first}")
        if "metric" in self.model_fields_set and self.metric != first:
            raise ValueError(f"metric: {self.metric} differs from the first objective, {first}")
        if self.mode is not None:
            raise ValueError("mode: with objectives, each takes its natural direction")
        object.__setattr__(self, "metric", first)
        return self

    @field_validator("searcher", mode="before")
    @classmethod
    def _searcher_by_name(cls, value: Any) -> Any:
        if isinstance(value, str):  # `searcher: tpe` for short
            return {"type": value}
        if not isinstance(value, dict):
            raise ValueError("expected tpe, random, or a mapping such as {type: tpe, "
                             "startup_trials: 5}")
        return value

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_by_name(cls, value: Any) -> Any:
        if isinstance(value, str):  # `scheduler: none` for short; asha and pbt need settings
            return {"type": value}
        if not isinstance(value, dict):
            raise ValueError("expected none, asha, pbt, or a mapping such as {type: asha, "
                             "grace_period: 100}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        if self.dataset not in NAMED_DATASETS and not self.dataset.startswith("folder:"):
            raise ValueError(f"dataset: unknown dataset {self.dataset!r}; expected one of "
                             f"{', '.join(NAMED_DATASETS)} or folder:<path>")
        fields = set(TrainConfig.model_fields)
        for section in ("fixed", "space"):
            for key in getattr(self, section):
                if key not in fields:
                    raise ValueError(f"{section}.{key}: not a TrainConfig field")
                if key in STUDY_CONTROLLED or key == "dataset":
                    raise ValueError(f"{section}.{key}: set by the study (budget, seed, "
                                     "resources, dataset), not here")
        for key in set(self.fixed) & set(self.space):
            raise ValueError(f"space.{key}: also in fixed")
        if self.baseline:
            for key, value in self.baseline.trained_values.items():
                if key in self.fixed and self.fixed[key] != value:
                    raise ValueError(f"fixed.{key}: {self.fixed[key]!r} differs from the "
                                     f"baseline's {value!r} ({self.baseline.path}); what a "
                                     "study varies from its baseline belongs in space")
        seen: dict[str, Param] = {}
        for key, param in self.space.items():
            for cond_key, values in (param.when or {}).items():
                where = f"space.{key}.when.{cond_key}"
                if cond_key not in seen:
                    raise ValueError(f"{where}: not a parameter defined earlier in space")
                if not isinstance(seen[cond_key], CategoricalParam):
                    raise ValueError(f"{where}: a condition needs a categorical parameter "
                                     "(a float or int range almost never takes one value)")
                values = values if isinstance(values, list) else [values]
                if not values:
                    raise ValueError(f"{where}: an empty list never holds")
                for v in values:
                    if v not in seen[cond_key].choices:
                        raise ValueError(f"{where}: {v!r} is not one of "
                                         f"{seen[cond_key].choices}")
            seen[key] = param
        if isinstance(self.scheduler, Pbt):
            for key in self.scheduler.mutations:
                if not isinstance(self.space.get(key), FloatParam):
                    raise ValueError(f"scheduler.mutations: {key} must be a float parameter in "
                                     "space (its range bounds the perturbations)")
            if self.scheduler.perturbation_interval % self.budget.eval_every:
                raise ValueError("scheduler.perturbation_interval: must be a multiple of "
                                 "budget.eval_every (PBT acts on evaluations)")
        if isinstance(self.scheduler, Pbt) and self.budget.unit != "updates":
            raise ValueError("budget.unit: PBT clones and perturbs at generator updates; use "
                             "unit: updates with pbt")
        if isinstance(self.scheduler, Pbt) and self.searcher.type != "random":
            raise ValueError("searcher: Ray runs no search algorithm beside PBT; "
                             "use searcher: random (the initial population is sampled at random)")
        if isinstance(self.scheduler, Asha) and self.scheduler.grace_period > self.budget.steps:
            raise ValueError("scheduler.grace_period: longer than budget.steps")
        if self.budget.eval_every > self.budget.steps:
            raise ValueError("budget.eval_every: longer than budget.steps")
        if self.final and self.final.steps < self.budget.steps:
            raise ValueError(f"final.steps: shorter than the search's budget.steps "
                             f"({self.budget.steps}); the final run trains longer, not less")
        if self.final and self.final.eval_every > self.final.steps:
            raise ValueError("final.eval_every: longer than final.steps")
        return self


def trial_values(spec: StudySpec, params: dict[str, Any], seed: int | None = None,
                 threads: int = 1, final: bool = False) -> dict[str, Any]:
    """A trial's TrainConfig fields: fixed values, then sampled ones, then the study's own (the
    final phase's length where `final`)."""
    length = spec.final if final and spec.final else spec.budget
    eval_every = length.eval_every
    start = spec.baseline.trained_values if spec.baseline else {}
    return {**start, **spec.fixed, **params, "dataset": spec.dataset, "unit": spec.budget.unit,
            "steps": length.steps,
            "eval_every": eval_every, "log_every": _log_every(eval_every, spec.budget.unit),
            "checkpoint_every": eval_every, "sample_every": eval_every,
            "seed": spec.seed if seed is None else seed, "threads": threads}


# How often a trial logs its losses at most: every 50 updates, about as many images, 10 s.
LOG_LIMIT = {"updates": 50, "images": 50 * 64, "seconds": 10}


def _log_every(eval_every: int, unit: str = "updates") -> int:
    """The largest divisor of eval_every not above the unit's limit: logs often, lands on every
    evaluation."""
    limit = min(LOG_LIMIT[unit], eval_every)
    return max(d for d in range(1, limit + 1) if eval_every % d == 0)


def _check_values(spec: StudySpec, source: str) -> None:
    """Every fixed value, range end and choice makes a valid TrainConfig alone (the key named),
    and every configuration the space can produce does too (both keys named)."""
    base = trial_values(spec, {})
    make_config(base, f"{source}: fixed")
    if spec.final:
        make_config(trial_values(spec, {}, final=True), f"{source}: final")
    for key, param in spec.space.items():
        for i, value in enumerate(param.choices if isinstance(param, CategoricalParam)
                                  else [param.low, param.high]):
            where = f"space.{key}.choices[{i}]" if isinstance(param, CategoricalParam) else (
                f"space.{key}.{'low' if i == 0 else 'high'}")
            # a conditional parameter is checked where it is sampled: its condition holding
            condition = {k: v[0] if isinstance(v, list) else v
                         for k, v in (param.when or {}).items()}
            try:
                make_config({**base, **condition, key: value})
            except ConfigError as err:
                detail = str(err).split(": ", 2)[-1]
                raise ConfigError(f"{source}: {where}: {detail}") from None
    check_runnable(spec.space, base, source)


def parse_spec(data: dict[str, Any], source: str) -> StudySpec:
    try:
        spec = StudySpec(**data)
    except ValidationError as err:
        raise ConfigError(one_line_error(err, source, UNION_TAGS)) from None
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from None
    _check_values(spec, source)
    return spec


def load_spec(path: str | Path) -> StudySpec:
    return parse_spec(read_yaml(path), str(path))
