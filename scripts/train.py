"""Train, validate, test or predict with litpoly's LightningCLI.

Examples::

    python scripts/train.py fit                                  # the default config: the seed's cubic, SGD
    python scripts/train.py fit --config configs/rmsprop.yaml    # the seed's nn + RMSprop cell
    python scripts/train.py test --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
    python scripts/train.py fit --help                           # the Trainer's and the run layer's settings
    python scripts/train.py fit --model.help sinefit.PolynomialRegressor   # the model's settings
"""

from litpoly import signals

with signals.starting():  # Ctrl-C while torch and Lightning load: one line, not a traceback
    from litpoly.cli import main

if __name__ == "__main__":
    main()
