"""Weight decay: the optimiser's L2 regularisation set to `value` (the classic regulariser baseline)."""

from benchmark.defenses.base import TrainingDefense
from benchmark.params import Param
from benchmark.registry import DEFENSES


@DEFENSES.register_module()
class WeightDecay(TrainingDefense):
    name = "weight_decay"
    order = 540
    example = {"value": 0.05}
    params = {"value": Param(float, low=0.0, help="the optimiser's weight decay")}

    def weight_decay(self, value: float) -> float:
        return self.values["value"]
