"""Train, validate, test or predict with litpoly's LightningCLI.

Examples::

    python scripts/train.py fit                                  # the default config: the seed's cubic, SGD
    python scripts/train.py fit --config configs/rmsprop.yaml    # the seed's nn + RMSprop cell
    python scripts/train.py test --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
    python scripts/train.py fit --help                           # every setting, with its default
"""

from pathlib import Path

from litpoly.cli import cli_main

#: The project's default run: the base of every command that names no model or data class of its own.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"

if __name__ == "__main__":
    cli_main(default_config=DEFAULT_CONFIG)
