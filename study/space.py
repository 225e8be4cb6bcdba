"""The spec's space as an Optuna define-by-run function; the baseline as its first point.

No work happens here: sampling only. Conditional parameters are sampled only when the parameters
they depend on took the listed values, so Optuna never sees a `width` for an mlp trial.
"""

from __future__ import annotations

from typing import Any

import optuna

from gan.config import TrainConfig
from gan.errors import ConfigError
from study.runnable import active
from study.spec import CategoricalParam, FloatParam, IntParam, Pbt, StudySpec

# The baseline where a spec names no file: the seed tutorials' reference configuration
# (Radford et al. 2015; pytorch/examples).
REFERENCE = {"lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5, "beta2": 0.999, "latent_dim": 100,
             "d_steps": 1, "g_steps": 1, "loss": "ns"}


def suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Sample one trial's hyperparameters, in the order the spec lists them."""
    params: dict[str, Any] = {}
    for key, p in spec.space.items():
        if not active(p.when, params):
            continue
        if isinstance(p, FloatParam):
            params[key] = trial.suggest_float(key, p.low, p.high, log=p.log)
        elif isinstance(p, IntParam):
            params[key] = trial.suggest_int(key, p.low, p.high, step=p.step, log=p.log)
        else:
            params[key] = trial.suggest_categorical(key, p.choices)
    return params


class DefineByRun:
    """`suggest` bound to a spec, picklable (Ray saves the searcher's state with it)."""

    def __init__(self, spec: StudySpec):
        self.spec = spec

    def __call__(self, trial: optuna.Trial) -> None:  # None: no constants beside the samples
        suggest(trial, self.spec)


# Tune config keys the study adds in confirmation and in the final run
NOT_HYPERPARAMETERS = ("seed", "label", "phase")
FINAL_PHASE = "final"


def is_final(config: dict[str, Any]) -> bool:
    """Whether a Tune config is the final run's: trained to final.steps, not budget.steps."""
    return config.get("phase") == FINAL_PHASE


def pbt_member(spec: StudySpec, final: bool) -> bool:
    """Whether a trial belongs to PBT's population: restored, it continues from the checkpoint
    Tune names (perhaps a donor's) and does not report its own evaluations again. The final run
    is one trial, trained as any other."""
    return isinstance(spec.scheduler, Pbt) and not final


def hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """A Tune config's hyperparameters; None marks a parameter inactive in this trial."""
    return {k: v for k, v in config.items() if k not in NOT_HYPERPARAMETERS and v is not None}


def is_baseline(config: dict[str, Any], baseline: dict[str, Any]) -> bool:
    return hyperparameters(config) == baseline


def baseline_params(spec: StudySpec) -> dict[str, Any]:
    """The baseline in the spec's space, for the parameters that are active: the baseline
    file's values, or the reference values; TrainConfig's defaults for what neither names."""
    defaults = TrainConfig().model_dump()
    named = spec.baseline.values if spec.baseline else REFERENCE
    params: dict[str, Any] = {}
    for key, p in spec.space.items():
        if not active(p.when, params):
            continue
        value = named.get(key, defaults[key])
        if isinstance(p, CategoricalParam) and value not in p.choices:
            raise ConfigError(f"space.{key}.choices: must include the baseline's {value!r}, "
                              f"so that the study always reports {spec.baseline_name}")
        if isinstance(p, FloatParam | IntParam) and not p.low <= value <= p.high:
            raise ConfigError(f"space.{key}: [{p.low}, {p.high}] must include the baseline's "
                              f"{value!r}, so that the study always reports {spec.baseline_name}")
        params[key] = value
    return params


def distributions(spec: StudySpec) -> dict[str, str]:
    """Each parameter's Optuna distribution, as Optuna's JSON: what a study rebuilt from records
    (MLflow runs) needs beside the trials' values."""
    out = {}
    for key, p in spec.space.items():
        if isinstance(p, FloatParam):
            dist = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
        elif isinstance(p, IntParam):
            dist = optuna.distributions.IntDistribution(p.low, p.high, log=p.log, step=p.step)
        else:
            dist = optuna.distributions.CategoricalDistribution(p.choices)
        out[key] = optuna.distributions.distribution_to_json(dist)
    return out


class _WhenActive:
    """A Tune `sample_from` for a conditional parameter: None (inactive) unless its condition
    holds for the values sampled for the other parameters."""

    def __init__(self, when: dict, domain):
        self.when, self.domain = when, domain

    def __call__(self, spec) -> Any:
        return self.domain.sample() if active(self.when, dict(spec.config)) else None


def tune_domain(p: FloatParam | IntParam | CategoricalParam):
    from ray import tune

    if isinstance(p, FloatParam):
        return tune.loguniform(p.low, p.high) if p.log else tune.uniform(p.low, p.high)
    if isinstance(p, IntParam):
        return (tune.qlograndint if p.log else tune.qrandint)(p.low, p.high, p.step)
    return tune.choice(p.choices)


def tune_param_space(spec: StudySpec) -> dict[str, Any]:
    """The space as Tune's own sampling domains: PBT's random initial population."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, p in spec.space.items():
        domain = tune_domain(p)
        space[key] = tune.sample_from(_WhenActive(p.when, domain)) if p.when else domain
    return space
