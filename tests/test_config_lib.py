"""jclust.config_lib.steps: durations in steps or epochs, and the configs that use it."""

import os

import ml_collections
import pytest

from jclust import config_lib
from jclust.config_lib import ConfigError
from tests.conftest import ROOT


def test_steps_wins_over_epochs_and_epochs_round_down():
    config = ml_collections.ConfigDict({"swav": {"freeze_steps": -1, "freeze_epochs": 1.5},
                                        "every_steps": 7, "every_epochs": 2.0})
    assert config_lib.steps(config, "swav.freeze", 10) == 15
    assert config_lib.steps(config, "swav.freeze", 7) == 10  # 10.5 steps
    assert config_lib.steps(config, "every", 10) == 7  # --config.every_steps=7 overrides epochs
    config.every_steps = 0
    assert config_lib.steps(config, "every", 10) == 0  # 0 is set: "never"
    config.swav.freeze_epochs = -1.0
    assert config_lib.steps(config, "swav.freeze", 10, default=3) == 3
    with pytest.raises(ConfigError, match="swav.freeze_steps or config.swav.freeze_epochs"):
        config_lib.steps(config, "swav.freeze", 10)
    assert config_lib.steps(config, "absent", 10, default=0) == 0


@pytest.mark.parametrize("spec, examples, freeze, every", [
    # The step counts these configs had, computed by hand for their data and batch size.
    ("swav.py", 70000, 273, 546), ("swav.py:digits", 1797, 28, 140),
    ("swav.py:cifar10", 60000, 2 * 234, 10 * 234),
    ("nmm.py", 70000, None, 1092), ("nmm.py:digits", 1797, None, 140),
])
def test_configs_durations_in_epochs_are_the_steps_they_were(spec, examples, freeze, every):
    config = config_lib.load_config(os.path.join(ROOT, "configs", spec))
    steps_per_epoch = examples // config.batch_size
    if freeze is not None:
        assert config_lib.steps(config, "swav.freeze_prototypes", steps_per_epoch) == freeze
    assert config_lib.steps(config, "eval_every", steps_per_epoch, default=0) == every
