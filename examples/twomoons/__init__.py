"""The second problem: two interleaving half-moons, classified by a small MLP.

It is deliberately unlike the sine example — 2-D inputs, mini-batches, a *mean* loss, Adam, a schedule in
epochs, a classification metric — and it is trained through the same ``scripts/train.py`` with no change to
the run layer, so the generic tests run against both problems. It is also the worked example of the README's
"Start your own project": a model (``model.py``), a data module (``data.py``) and one config
(``config.yaml``)::

    python scripts/train.py fit --config examples/twomoons/config.yaml
"""

from twomoons.data import TwoMoonsDataModule, make_moons
from twomoons.model import TwoMoonsClassifier

__all__ = ["TwoMoonsClassifier", "TwoMoonsDataModule", "make_moons"]
