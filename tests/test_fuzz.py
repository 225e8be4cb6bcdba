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
              "width", "float", "int", "categorical", "asha", "pbt", "none", "tpe", "random"]
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
