"""Configuration helpers: the shared config skeleton, loading and validation.

Every method config (``configs/<method>.py``) starts from :func:`base_config` and adds its own
section. Configs are locked: a key that is not in the skeleton is an error, never a silent new
field. Command-line overrides (``--config.a.b=v``) are checked here *before* absl parses them, so a
typo gives one line naming the key and the valid keys instead of a traceback.

``base``: ConfigError, the skeleton and the checks of its values; ``sections``: the sections and
data variants the method configs share; ``loading``: config files; ``overrides``: dotted keys set
from the command line or a mapping. The public names are all here.
"""

from jclust.config_lib.base import (RESUMABLE_KEYS, ConfigError, base_config, check_output_dir,
                                    check_ranges, finalize, resumable_keys, steps, validate)
from jclust.config_lib.loading import load_config, load_sibling
from jclust.config_lib.overrides import (apply_overrides, cli_overrides, config_spec_from_argv,
                                         parse_value)
from jclust.config_lib.sections import (backbone_image_size, jule_cnn_model, optim_section,
                                        small_cnn_model, use_cifar10, use_digits)

__all__ = ["RESUMABLE_KEYS", "ConfigError", "apply_overrides", "backbone_image_size", "base_config",
           "check_output_dir", "check_ranges", "cli_overrides", "config_spec_from_argv", "finalize", "jule_cnn_model",
           "load_config", "load_sibling", "optim_section", "parse_value", "resumable_keys",
           "small_cnn_model", "steps", "use_cifar10", "use_digits", "validate"]
