"""Fuzzing the study's input path: whatever the YAML holds, the only exception that escapes
validation is the project's own one-line error."""

import copy
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gan.errors import GanError
from study.run import validate
from study.spec import parse_spec

ROOT = Path(__file__).parents[1]
SMOKE = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
VOCABULARY = ["name", "dataset", "metric", "mode", "seed", "budget", "trials", "steps",
              "eval_every", "time_limit_s", "scheduler", "type", "grace_period",
              "reduction_factor", "perturbation_interval", "mutations", "searcher", "resources",
              "cpu", "gpu", "max_concurrent", "confirm", "top_k", "seeds", "fixed", "space",
              "low", "high", "log", "step", "choices", "when", "lr_g", "lr_d", "loss", "arch",
              "width", "float", "int", "categorical", "asha", "pbt", "none", "tpe", "random",
              "objectives", "fid", "train_s", "g_params", "baseline"]
keys = st.sampled_from(VOCABULARY) | st.text(max_size=8)
scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats()
           | st.text(max_size=12) | st.sampled_from(VOCABULARY))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(keys, inner, max_size=5), max_leaves=25)
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,  # CI: same cases each run
                suppress_health_check=[HealthCheck.too_slow])


def paths(tree, prefix=()):
    """Every key path of a nested mapping, leaves and inner nodes."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield (*prefix, k)
            yield from paths(v, (*prefix, k))


SMOKE_PATHS = list(paths(SMOKE))


@FUZZ
@given(st.dictionaries(keys, values, max_size=8))
def test_random_mappings_raise_only_the_projects_error(data):
    try:
        parse_spec(data, "fuzz.yaml")
    except GanError as err:
        assert str(err).startswith("fuzz.yaml") and "\n" not in str(err)


@FUZZ
@given(st.sampled_from(SMOKE_PATHS), values)
def test_a_valid_spec_with_one_value_replaced_validates_or_fails_cleanly(path, value):
    data = copy.deepcopy(SMOKE)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(data))
        try:
            validate(spec_path, smoke=False, out=Path(tmp) / "study", tracking_uri=None)
        except GanError as err:
            assert "\n" not in str(err)
        assert not (Path(tmp) / "study").exists()


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_arbitrary_bytes_as_a_spec_file_fail_cleanly(raw):
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.yaml"
        spec_path.write_bytes(raw)
        try:
            validate(spec_path, smoke=False, out=Path(tmp) / "study", tracking_uri=None)
        except GanError as err:
            assert str(err).startswith(str(spec_path)) and "\n" not in str(err)


# Parameters a generated space draws from: values that clash (label smoothing with hinge or
# wgan, a 28 px dcgan with width...), conditions that keep them apart, and ranges.
LOSSES = ["bce", "ns", "hinge", "lsgan", "wgan"]


@st.composite
def spaces(draw):
    pool = {
        "loss": lambda: {"type": "categorical", "choices": draw(
            st.lists(st.sampled_from(LOSSES), min_size=1, max_size=5, unique=True))},
        "label_smoothing": lambda: {"type": "float", "low": draw(st.sampled_from([0.0, 0.1])),
                                    "high": draw(st.sampled_from([0.1, 0.3]))},
        "gp_weight": lambda: {"type": "float", "low": 1.0, "high": 20.0, "log": True},
        "arch": lambda: {"type": "categorical", "choices": draw(
            st.lists(st.sampled_from(["mlp", "dcgan"]), min_size=1, max_size=2, unique=True))},
        "latent_dist": lambda: {"type": "categorical", "choices": ["normal", "uniform"]},
        "d_steps": lambda: {"type": "int", "low": 1, "high": draw(st.integers(1, 3))},
        "feature_net": lambda: {"type": "categorical", "choices": draw(st.lists(
            st.sampled_from(["auto", "classifier", "contrastive", "inception"]), min_size=1,
            max_size=3, unique=True))},
        "lr_g": lambda: {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    }
    keys = draw(st.lists(st.sampled_from(sorted(pool)), min_size=1, max_size=5, unique=True))
    space = {}
    for key in keys:
        param = pool[key]()
        earlier = [k for k, p in space.items() if p["type"] == "categorical"]
        if earlier and draw(st.booleans()):
            cond = draw(st.sampled_from(earlier))
            param["when"] = {cond: draw(st.lists(st.sampled_from(space[cond]["choices"]),
                                                 min_size=1, unique=True))}
        space[key] = param
    return space


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(spaces())
def test_a_space_is_refused_in_one_line_or_yields_only_valid_configs(space):
    """No Ray: a space either fails validation with one line, or every configuration sampled
    from it (Optuna's random sampler, as a study would) is a valid TrainConfig."""
    import optuna

    from gan.config import make_config
    from study.space import suggest
    from study.spec import trial_values

    data = {"name": "gen", "budget": {"trials": 2, "steps": 40, "eval_every": 10},
            "space": space}
    try:
        spec = parse_spec(data, "gen.yaml")
    except GanError as err:
        assert str(err).startswith("gen.yaml: ") and "\n" not in str(err)
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = suggest(study.ask(), spec)
        make_config(trial_values(spec, params))  # raises if the proof let a clash through
