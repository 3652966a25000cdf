"""Every config the repository ships loads as the command its header names: a typo or a stale key fails here, not an hour into a sweep."""

import re
from pathlib import Path

import pytest
import yaml

from mldcn.config import to_dict
from mldcn.studies.ablate import ablate_config_from_dict
from mldcn.studies.scale import scale_config_from_dict
from mldcn.train.run import run_config_from_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LOADERS = {"scale": scale_config_from_dict, "ablate": ablate_config_from_dict, "train": run_config_from_dict}


def command(path: Path) -> str:
    """The mldcn subcommand the config's comments run it with."""
    found = re.search(r"mldcn (train|scale|ablate) [^\n]*--config", path.read_text())
    assert found, f"{path}: no comment says which mldcn command runs it"
    return found.group(1)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_config_loads_as_its_command(path):
    config = LOADERS[command(path)](yaml.safe_load(path.read_text()))
    assert to_dict(config)  # and serialises again, as a run directory records it


def test_one_pass_sweeps_train_on_whole_batches_of_rows_they_generate():
    for name in ("industrial_onepass", "synthetic_onepass"):
        config = scale_config_from_dict(yaml.safe_load((CONFIGS / "scale" / f"{name}.yaml").read_text()))
        assert config.train.examples % config.train.batch_size == 0, name
        assert config.train.examples <= getattr(config.data, config.data.source).train_rows, name
