"""Rounding: release every posterior rounded to d decimals, as many real prediction APIs do.

Not renormalised: an API that rounds returns the rounded numbers, and that is what the attacker sees.
A posterior that rounds to 0 is released as the floor 1e-30.
"""

import torch
from torch import Tensor

from benchmark.defenses.base import OutputDefense
from benchmark.defenses.output import to_log
from benchmark.params import Param
from benchmark.registry import DEFENSES


@DEFENSES.register_module()
class Rounding(OutputDefense):
    name = "rounding"
    order = 150
    example = {"decimals": 2}
    params = {"decimals": Param(int, low=0, high=8, help="decimal places kept of each posterior value")}

    def apply(self, log_probs: Tensor, generator=None) -> Tensor:
        return to_log(torch.round(log_probs.double().exp(), decimals=self.values["decimals"]).to(log_probs.dtype))
