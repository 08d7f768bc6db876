"""Temperature: release softmax(log p / t), a flatter (t > 1) or sharper posterior with the same argmax."""

import torch
from torch import Tensor

from benchmark.defenses.base import LOG_FLOOR, OutputDefense
from benchmark.params import Param
from benchmark.registry import DEFENSES


@DEFENSES.register_module()
class Temperature(OutputDefense):
    name = "temperature"
    order = 130
    example = {"t": 5.0}
    params = {"t": Param(float, low=0.0, low_open=True, help="temperature; 1 releases the posterior unchanged")}

    def apply(self, log_probs: Tensor, generator=None) -> Tensor:
        return torch.log_softmax(log_probs / self.values["t"], dim=1).clamp_min(LOG_FLOOR)
