"""No defense: plain training, and the outputs released as they are."""

from benchmark.defenses.base import TrainingDefense
from benchmark.registry import DEFENSES


@DEFENSES.register_module()
class NoDefense(TrainingDefense):
    """The baseline every defense is compared with (a training-side no-op, so it trains its own victim)."""

    name = "none"
    order = 0
