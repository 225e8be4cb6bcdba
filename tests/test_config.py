import pytest

from gan.config import TrainConfig, load_config, make_config, read_yaml
from gan.errors import ConfigError


def test_defaults_are_the_tutorials_reference_values():
    cfg = TrainConfig()
    assert (cfg.lr_g, cfg.lr_d, cfg.beta1, cfg.beta2) == (2e-4, 2e-4, 0.5, 0.999)
    assert (cfg.latent_dim, cfg.d_steps, cfg.g_steps, cfg.loss) == (100, 1, 1, "ns")
    assert (cfg.dataset, cfg.arch, cfg.image_size) == ("mnist", "dcgan", 32)


def test_unknown_key_names_source_and_key():
    with pytest.raises(ConfigError, match=r"^my\.yaml: lr_gen: unknown key$"):
        make_config({"lr_gen": 1e-3}, "my.yaml")


@pytest.mark.parametrize("key,value,fragment", [
    ("steps", "many", "steps: Input should be a valid integer"),
    ("steps", 1.5, "steps: Input should be a valid integer"),
    ("lr_g", -1.0, "lr_g: Input should be greater than 0"),
    ("arch", "resnet", "arch: Input should be 'mlp' or 'dcgan'"),
    ("loss", "kl", "loss: Input should be"),
    ("image_size", 48, "image_size: Input should be 28, 32 or 64"),
    ("dataset", "imagenet", "dataset: unknown dataset 'imagenet'"),
    ("device", "tpu", "device: unknown device 'tpu'"),
])
def test_bad_values_name_the_key(key, value, fragment):
    with pytest.raises(ConfigError) as err:
        make_config({key: value}, "cfg")
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="label_smoothing"):
        make_config({"loss": "hinge", "label_smoothing": 0.1})
    with pytest.raises(ConfigError, match="checkpoint_every: must be a multiple of log_every"):
        make_config({"log_every": 30, "checkpoint_every": 50})


def test_a_length_is_steps_or_epochs_never_both():
    assert make_config({}).steps == 2000 and make_config({}).epochs is None
    by_epochs = make_config({"epochs": 20})
    assert by_epochs.steps is None and by_epochs.epochs == 20
    assert make_config(by_epochs.model_dump()) == by_epochs
    with pytest.raises(ConfigError, match="epochs: the length is epochs or steps, not both"):
        make_config({"epochs": 20, "steps": 100})
    with pytest.raises(ConfigError, match="epochs: a length in passes over the data; unit "):
        make_config({"epochs": 20, "unit": "seconds"})
    with pytest.raises(ConfigError, match="steps: null is only for a length in epochs"):
        make_config({"steps": None})


def test_yaml_then_set_overrides_with_type_conversion(tmp_path):
    path = tmp_path / "c.yaml"
    # PyYAML reads 2e-4 (no dot) as a string: the config must still take it as a float.
    path.write_text("lr_g: 2e-4\nsteps: 300\narch: mlp\n")
    cfg = load_config(path, ["steps=500", "lr_d=1e-3", "amp=true"])
    assert cfg.lr_g == 2e-4 and cfg.steps == 500 and cfg.lr_d == 1e-3 and cfg.amp is True
    assert cfg.arch == "mlp"


def test_set_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="--set steps: expected key=value"):
        load_config(None, ["steps"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("steps: 10\nlr_g: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML \(line \d+\)"):
        read_yaml(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml(path)


def test_yaml_size_is_bounded(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("a: " + "x" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        read_yaml(path)


# Fields whose only non-default values need another field set too.
COMPANIONS = {"inception_weights": {"feature_net": "inception"}, "r1_every": {"r1_weight": 1.0},
              "mlp_g_layers": {"arch": "mlp"}, "mlp_d_layers": {"arch": "mlp"},
              "conv_bias": {"arch": "dcgan"}}


def non_default(name: str, field) -> tuple[object, dict]:
    """A value other than the field's default that TrainConfig accepts, found from the field's
    type and bounds alone, so that a new field is covered without editing this test."""
    import typing

    default, ann = field.default, field.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) is typing.Literal:
        candidates = [v for v in args if v != default]
    elif ann is bool:
        candidates = [not default]
    elif ann is int:
        candidates = [default + 1, default * 2 + 10, 1, 2, 50]
    elif ann is float:
        candidates = [default / 2, default * 2 + 0.1, 0.1, 0.25]
    elif args == [int]:  # int | None
        candidates = [(default or 0) + 1, 50]
    elif args == [float]:  # float | None
        candidates = [0.1, 0.25, 0.0]
    elif typing.get_origin(ann) is tuple:
        candidates = [(64,), (32, 16)]
    else:  # str or str | None: a named choice where there is one, else a path
        candidates = ["fashion_mnist", "cpu", "some/path.pth", "folder:some/images"]
    extra = COMPANIONS.get(name, {})
    for value in candidates:
        if value == default:
            continue
        try:
            make_config({name: value, **extra})
        except ConfigError:
            continue
        return value, extra
    raise AssertionError(f"{name}: no non-default value found from its type")


FIELDS = sorted(TrainConfig.model_fields)


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_round_trips_through_set_and_a_spec(name):
    import yaml

    from study.spec import STUDY_CONTROLLED, parse_spec, trial_values

    field = TrainConfig.model_fields[name]
    value, extra = non_default(name, field)
    for v, companions in ((field.default, {}), (value, extra)):
        text = yaml.safe_dump(v).removesuffix("\n...\n").strip()
        sets = [f"{name}={text}"] + [f"{k}={yaml.safe_dump(x).strip()}" for k, x in
                                     companions.items()]
        assert getattr(load_config(None, sets), name) == v, sets
        if name in STUDY_CONTROLLED or name == "dataset":
            continue  # set by the study's budget, seed, resources or dataset, not in fixed
        searched = "beta2" if name != "beta2" else "beta1"
        spec = parse_spec({"name": "rt", "budget": {"trials": 1, "steps": 10, "eval_every": 10},
                           "fixed": {name: v, **companions},
                           "space": {searched: {"type": "float", "low": 0.9, "high": 0.99}}},
                          "spec")
        assert getattr(make_config(trial_values(spec, {})), name) == v


def test_set_reads_yaml_scalars():
    cfg = load_config(None, ["image_size=28", "channels=3", "data_dir=null", "amp=true",
                             "lr_g=1e-3"])
    assert (cfg.image_size, cfg.channels, cfg.data_dir, cfg.amp) == (28, 3, None, True)
    assert cfg.lr_g == 1e-3
    with pytest.raises(ConfigError, match=r"--set width: .*valid integer"):
        load_config(None, ["width=[1, 2]"])
    with pytest.raises(ConfigError, match=r"--set width=\{a: 1\}: expected one YAML value"):
        load_config(None, ["width={a: 1}"])
    assert load_config(None, ["arch=mlp", "mlp_g_layers=[64, 32]"]).mlp_g_layers == (64, 32)


def test_a_conditional_parameter_is_checked_where_its_condition_holds():
    """r1_every means something only beside an r1_weight: sampled under that condition it is
    valid, while a space that can pair it with r1_weight 0 is refused, naming both keys."""
    from study.spec import parse_spec

    def spec(when):
        return {"name": "r1", "budget": {"trials": 2, "steps": 40, "eval_every": 10},
                "space": {"r1_weight": {"type": "categorical", "choices": [0.0, 1.0]},
                          "r1_every": {"type": "categorical", "choices": [4, 16], **when}}}

    parse_spec(spec({"when": {"r1_weight": [1.0]}}), "conditional.yaml")
    with pytest.raises(ConfigError, match=r"^unconditional.yaml: .*r1_every"):
        parse_spec(spec({}), "unconditional.yaml")
