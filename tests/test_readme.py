"""README is checked against the code: every TrainConfig field and every option of every command
line is in it, and the counts it gives are the repository's."""

import re
from pathlib import Path

import pytest

from gan.config import TrainConfig

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
CLIS = ["gan.train", "gan.sample", "gan.evaluate", "gan.data", "gan.metrics.features",
        "study.run", "study.report", "study.screenshots"]


def test_every_train_config_field_is_documented():
    missing = [name for name in TrainConfig.model_fields if f"`{name}`" not in README]
    assert not missing, f"TrainConfig fields missing from README: {missing}"


@pytest.mark.parametrize("module", CLIS)
def test_every_command_line_option_is_documented(module, capsys):
    import importlib

    argv = ["export", "--help"] if module == "gan.data" else ["--help"]
    with pytest.raises(SystemExit):
        importlib.import_module(module).main(argv)
    options = set(re.findall(r"(--[a-z][a-z-]+)", capsys.readouterr().out)) - {"--help"}
    assert options, module
    missing = sorted(o for o in options if o not in README)
    assert not missing, f"{module} options missing from README: {missing}"


def test_counts_in_readme_are_the_repositorys():
    specs = len(list((ROOT / "tests" / "bad_inputs").glob("*.yaml")))
    lines = [line for line in (ROOT / "tests" / "bad_inputs" / "command_lines.txt")
             .read_text().splitlines() if line and not line.startswith("#")]
    said = {int(n) for n in re.findall(r"(\d+) bad specs", README)}
    said |= {int(n) for n in re.findall(r"one spec per case \((\d+)\)", README)}
    assert said == {specs}, (said, specs)
    assert {int(n) for n in re.findall(r"(\d+) bad command lines", README)} == {len(lines)}
