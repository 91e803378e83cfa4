"""IDEC (DEC + the kept decoder's reconstruction loss) on Fashion-MNIST, sized for 2 CPU cores.

  python -m jclust.main --config=configs/idec.py --workdir=runs/idec
  python -m jclust.main --config=configs/idec.py:digits --workdir=runs/idec_digits
"""

from jclust import config_lib


def get_config(arg: str = ""):
    config = config_lib.load_sibling(__file__, "dec.py", arg)
    config.method = "idec"
    config.dec.gamma = 0.1
    config.dec.optimizer = "adam"
    config.dec.learning_rate = 1e-3
    return config_lib.finalize(config)
