"""A misspelt configuration key is an error that names the nearest valid key, in both YAML readers."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_modules.cli import add_trainer_args, new_parser
from lightning_modules.config import ConfigError
from methods.suite_config import check_runner_keys


def test_runner_yaml_typo_names_the_nearest_key() -> None:
    data = {"runner": {"total_steps": 10, "gradient_clippng": 5.0}, "optimizer": {"lr": 1e-4}, "datarc": {"sets": []}}
    with pytest.raises(ConfigError, match=r"r\.yaml: unknown key 'runner\.gradient_clippng'; did you mean 'runner\.gradient_clipping'\?"):
        check_runner_keys(data, "r.yaml")
    data = {"runner": {"total_steps": 10}, "optimizer": {"learning_rate": 1e-4}}
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer\.learning_rate'; valid keys: betas, eps, lr, weight_decay"):
        check_runner_keys(data, "r.yaml")
    check_runner_keys({"runner": {"total_steps": 10, "gradient_clipping": 5.0}, "datarc": {"sets": ["a.csv"]}}, "r.yaml")


def test_recipe_typo_names_the_nearest_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = new_parser("test")
    add_trainer_args(parser)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("exp_dir: exp\nclip_nrm: 5.0\n")
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", str(recipe)])
    assert "did you mean 'clip_norm'?" in capsys.readouterr().err
    cfg = parser.parse_args(["--exp_dir", "exp", "--clip_norm", "5"])
    assert cfg.clip_norm == 5.0
