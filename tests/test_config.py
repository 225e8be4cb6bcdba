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
