"""The paper's shadow-model attack: a CNN trained on random square crops of the shadow model's
member (label 1) / non-member (label 0) representations, scored on N random crops per query image.

Crops smaller than the map: the crop side is min(crop, H, W). Padding would be wrong here, since a
zero SLM means "confident and correct" and would make padded crops look like members.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from benchmark.attacks.network import SIZES, AttackNet
from benchmark.errors import SegleakError
from benchmark.params import Param, check_params


MAX_CROPS = 10_000  # per image: the authors use 6
# The grid's `attack_train` block: the patch attack's training settings (the paper does not publish its own).
ATTACK_TRAIN_PARAMS: dict[str, Param] = {
    "size": Param(str, default="tiny", choices=tuple(SIZES), help="attack network: tiny, or paper (ResNet-50)"),
    "crop": Param(int, default=32, low=1, help="side of the square crops, in released-map pixels"),
    # bounded: an epoch's crop index holds n_crops_train ids per image (12 bytes each), 1e8 would fill memory
    "n_crops_train": Param(int, default=6, low=1, high=MAX_CROPS, help="crops per image per epoch"),
    "n_crops_test": Param(int, default=6, low=1, high=MAX_CROPS, help="crops per scored image"),
    "epochs": Param(int, default=10, low=1),
    "batch_size": Param(int, default=32, low=1),
    "lr": Param(float, default=1e-3, low=0.0, low_open=True),
    "weight_decay": Param(float, default=1e-4, low=0.0),
}


@dataclass
class PatchAttackConfig:
    """Attack-model settings; the paper does not publish its training hyper-parameters, so these are ours.

    crop: 32 suits the synthetic CPU maps (posteriors at 1/4 of a small image); the paper uses 90 on
      Cityscapes at 1/8 resolution (128x256). n_crops_train / n_crops_test: 6 as in the authors' code
      (train: crops per image per epoch, drawn afresh every epoch). epochs 10, Adam lr 1e-3, weight decay
      1e-4, batch 32: enough for the tiny net to converge on a few hundred shadow images.
    """

    size: str = "tiny"
    crop: int = 32
    n_crops_train: int = 6
    n_crops_test: int = 6
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    accelerator: str = "auto"
    precision: str = "32-true"

    @classmethod
    def of(cls, attack_train: dict[str, Any], seed: int) -> PatchAttackConfig:
        return cls(seed=seed, **check_params("attack_train", ATTACK_TRAIN_PARAMS, attack_train))


def random_crops(reps: Tensor, image_idx: Tensor, crop: int, generator: torch.Generator) -> Tensor:
    """One random `crop x crop` window per entry of `image_idx` from `reps [N,Ch,H,W]`, vectorised by
    advanced indexing (no Python loop over crops); returns `[len(image_idx),Ch,c,c]`, c = min(crop,H,W)."""
    h, w = reps.shape[-2:]
    c = min(crop, h, w)
    n = len(image_idx)
    top = torch.randint(0, h - c + 1, (n,), generator=generator)
    left = torch.randint(0, w - c + 1, (n,), generator=generator)
    offsets = torch.arange(c)
    rows = (top[:, None] + offsets)[:, :, None]  # [n,c,1]
    cols = (left[:, None] + offsets)[:, None, :]  # [n,1,c]
    return reps[image_idx[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # [n,c,c,Ch] -> [n,Ch,c,c]


class _CropBatches(IterableDataset):
    """One epoch = n_crops crops per image of the larger group, the smaller group upsampled to match
    (balanced classes); crops and order are redrawn from a seeded generator every epoch."""

    def __init__(self, member: Tensor, nonmember: Tensor, cfg: PatchAttackConfig) -> None:
        self.reps = torch.cat([member, nonmember])
        self.labels = torch.cat([torch.ones(len(member)), torch.zeros(len(nonmember))]).long()
        self.groups = (torch.arange(len(member)), torch.arange(len(member), len(self.reps)))
        self.per_group = max(len(member), len(nonmember)) * cfg.n_crops_train
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def __len__(self) -> int:
        full, rest = divmod(2 * self.per_group, self.cfg.batch_size)
        return full + (rest > 1)  # a last batch of one is dropped: BatchNorm cannot train on it

    def _group_draw(self, group: Tensor) -> Tensor:
        """per_group indices cycling through shuffled copies of the group (each image ~equally often)."""
        copies = -(-self.per_group // len(group))
        perms = torch.rand(copies, len(group), generator=self.generator).argsort(dim=1)
        return group[perms.flatten()[: self.per_group]]

    def __iter__(self):
        idx = torch.cat([self._group_draw(g) for g in self.groups])
        idx = idx[torch.randperm(len(idx), generator=self.generator)]
        for batch in idx.split(self.cfg.batch_size)[: len(self)]:
            yield random_crops(self.reps, batch, self.cfg.crop, self.generator), self.labels[batch]


class PatchAttackModule(pl.LightningModule):
    """Trains an AttackNet with cross-entropy on member / non-member crops."""

    def __init__(self, net: AttackNet, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.weight_decay = weight_decay

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def _check_reps(reps: Tensor, name: str) -> None:
    if reps.dim() != 4 or len(reps) == 0:
        raise SegleakError(f"{name} must be a non-empty [N,C,H,W] tensor, got shape {tuple(reps.shape)}")


def fit_patch_attack(member_reps: Tensor, nonmember_reps: Tensor, cfg: PatchAttackConfig) -> AttackNet:
    """Train the attack on shadow representations `[N,Ch,H,W]`; deterministic for `cfg.seed` on CPU.

    Returns the trained network (on the CPU, in eval mode).
    """
    _check_reps(member_reps, "member_reps")
    _check_reps(nonmember_reps, "nonmember_reps")
    if member_reps.shape[1:] != nonmember_reps.shape[1:]:
        raise SegleakError(
            f"member and non-member maps differ in shape: {tuple(member_reps.shape[1:])} vs "
            f"{tuple(nonmember_reps.shape[1:])}"
        )
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's global RNG
        torch.manual_seed(cfg.seed)
        net = AttackNet(member_reps.shape[1], cfg.size)
    data = _CropBatches(member_reps.float().cpu(), nonmember_reps.float().cpu(), cfg)
    trainer = pl.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        max_epochs=cfg.epochs,
        precision=cfg.precision,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        deterministic=True,
    )
    with warnings.catch_warnings():  # crops come from memory: one loader process is intended, so its
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # length is exact
        warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
        trainer.fit(PatchAttackModule(net, cfg.lr, cfg.weight_decay), DataLoader(data, batch_size=None))
    return net.cpu().eval()


def _device(accelerator: str) -> torch.device:
    use_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if use_cuda else "cpu")


@torch.no_grad()
def score_patch_attack(net: AttackNet, reps: Tensor, cfg: PatchAttackConfig, seed: int = 0) -> np.ndarray:
    """Image scores: the member margin logit[1] - logit[0] summed over `cfg.n_crops_test` random crops.

    The paper sums the class-1 logit alone, which moves with any shift common to both logits; the margin
    (the crop's log-odds) does not. Crops are drawn from a generator seeded with `seed`; batched, no grad.
    """
    _check_reps(reps, "reps")
    generator = torch.Generator().manual_seed(seed)
    image_idx = torch.arange(len(reps)).repeat_interleave(cfg.n_crops_test)
    reps = reps.float().cpu()
    device = _device(cfg.accelerator)
    was_training, home = net.training, next(net.parameters()).device
    net.eval().to(device)
    margins = []
    for batch in image_idx.split(cfg.batch_size * 4):
        crops = random_crops(reps, batch, cfg.crop, generator).to(device)
        logits = net(crops).double()
        margins.append((logits[:, 1] - logits[:, 0]).cpu())
    net.to(home).train(was_training)
    return torch.cat(margins).reshape(len(reps), cfg.n_crops_test).sum(dim=1).numpy()
