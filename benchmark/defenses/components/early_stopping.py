"""Early stopping as a reduced epoch budget: ceil(fraction * epochs) epochs.

Not patience on a held-out loss: the victim's held-out images are the attack's non-members, and choosing
the stopping epoch on them would let non-members shape the released model.
"""

import math

from benchmark.defenses.base import TrainingDefense
from benchmark.params import Param
from benchmark.registry import DEFENSES


@DEFENSES.register_module()
class EarlyStopping(TrainingDefense):
    name = "early_stopping"
    order = 550
    example = {"fraction": 0.5}
    params = {"fraction": Param(float, low=0.0, high=1.0, low_open=True, help="fraction of the epochs trained")}

    def epochs(self, epochs: int) -> int:
        return max(1, math.ceil(self.values["fraction"] * epochs))
