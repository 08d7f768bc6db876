"""The paper's shadow-model attack: a ResNet trained on random square crops of a representation of the
shadow model's outputs (structured loss map, posteriors + one-hot ground truth, or posteriors alone);
an image's score is its crops' summed member margin (benchmark.attacks.patch_attack)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmark.attacks.base import Attack, AttackerData, Observed
from benchmark.attacks.features import REPRESENTATIONS, representation
from benchmark.attacks.network import AttackNet
from benchmark.attacks.patch_attack import PatchAttackConfig, fit_patch_attack, score_patch_attack
from benchmark.errors import SegleakError
from benchmark.params import Param
from benchmark.registry import ATTACKS

WEIGHTS = "attack.pt"


@ATTACKS.register_module()
class PatchAttack(Attack):
    name = "patch"
    order = 10
    label_param = "representation"
    uses_attack_train = True
    params = {"representation": Param(str, default="slm", choices=tuple(REPRESENTATIONS))}
    tunable = ("crop", "epochs")  # attack_train keys a grid may tune (ray_jobs.running.tuning)

    def _config(self, seed: int) -> PatchAttackConfig:
        return PatchAttackConfig.of(self.attack_train, seed)

    def _inputs(self, observed: Observed, cfg: PatchAttackConfig) -> torch.Tensor:
        released = observed.released
        reps = representation(self.values["representation"], released.log_probs, released.labels.long(),
                              hard=released.label_only)
        if cfg.crop > min(reps.shape[-2:]):
            raise SegleakError(f"attack_train.crop {cfg.crop} is larger than the released {reps.shape[-2]}x"
                               f"{reps.shape[-1]} maps: lower the crop or release at a finer output_stride")
        return reps

    def fit(self, data: AttackerData, out: Path, seed: int) -> dict:
        cfg = self._config(seed)
        reps = self._inputs(data.shadow, cfg)
        member = torch.from_numpy(data.shadow.is_member)
        net = fit_patch_attack(reps[member], reps[~member], cfg)
        torch.save(net.state_dict(), out / WEIGHTS)
        return {"in_channels": int(reps.shape[1])}

    def score(self, state: dict, fit_dir: Path, target: Observed, seed: int) -> np.ndarray:
        cfg = self._config(seed)
        net = AttackNet(in_channels=state["in_channels"], size=cfg.size)
        net.load_state_dict(torch.load(fit_dir / WEIGHTS, weights_only=True))
        return score_patch_attack(net, self._inputs(target, cfg), cfg, seed=seed)
