"""Training-side defenses: how each one changes the victim's training, resolved in one place.

A grid names one defense and its parameters; `resolve_training_defense` validates them and returns a
`TrainingRecipe`, the concrete knobs the trainer applies:

| defense          | params                                                        | effect |
|------------------|---------------------------------------------------------------|--------|
| `none`           | -                                                             | plain training |
| `label_smoothing`| `eps` in (0, 1)                                               | CE against (1-eps)*one-hot + eps/C |
| `mixup`          | `alpha` > 0                                                   | images mixed with a shuffled copy of the batch, lam ~ Beta(alpha, alpha); the per-image CE is mixed with the same lam |
| `weight_decay`   | `value` >= 0                                                  | replaces the optimiser's weight decay (the L2 regularisation baseline) |
| `early_stopping` | `fraction` in (0, 1]                                          | trains for ceil(fraction * epochs) epochs |
| `dp_sgd`         | `max_grad_norm` > 0 and exactly one of `noise_multiplier` >= 0 or `target_epsilon` > 0; optional `delta` in (0, 1), default 1/n_train | DP-SGD with Opacus (benchmark.models.dp) |

Early stopping is a reduced epoch budget, not patience on a held-out loss: the victim's held-out images are the
attack's non-members, and choosing the stopping epoch on them would let non-members shape the released model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

from benchmark.errors import SegleakError

TRAINING_DEFENSES: dict[str, tuple[set[str], set[str]]] = {
    # name: (required params, optional params)
    "none": (set(), set()),
    "label_smoothing": ({"eps"}, set()),
    "mixup": ({"alpha"}, set()),
    "weight_decay": ({"value"}, set()),
    "early_stopping": ({"fraction"}, set()),
    "dp_sgd": ({"max_grad_norm"}, {"noise_multiplier", "target_epsilon", "delta"}),
}


@dataclass(frozen=True)
class DPParams:
    """DP-SGD settings: the noise is given directly or found by Opacus for `target_epsilon` at `delta`."""

    max_grad_norm: float
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float | None = None  # None: 1 / n_train

    def resolved_delta(self, n_train: int) -> float:
        return self.delta if self.delta is not None else 1.0 / n_train


@dataclass(frozen=True)
class TrainingRecipe:
    """The knobs a defense sets; `none` gives the plain values passed in."""

    epochs: int
    weight_decay: float
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    dp: DPParams | None = None


def _number(name: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise SegleakError(f"training defense {name!r}: parameter {key!r} must be a finite number, got {value!r}")
    return float(value)


def resolve_training_defense(name: str, params: dict, *, epochs: int, weight_decay: float) -> TrainingRecipe:
    """Validate `params` for defense `name` and return the recipe applied to a run of `epochs` epochs."""
    if name not in TRAINING_DEFENSES:
        raise SegleakError(f"unknown training defense {name!r}; known: {', '.join(sorted(TRAINING_DEFENSES))}")
    required, optional = TRAINING_DEFENSES[name]
    given = set(params)
    if not required <= given or not given <= required | optional:
        raise SegleakError(
            f"training defense {name!r} takes parameters {sorted(required)}"
            + (f" (optional {sorted(optional)})" if optional else "")
            + f", got {sorted(given)}"
        )
    values = {k: _number(name, k, v) for k, v in params.items()}
    plain = TrainingRecipe(epochs=epochs, weight_decay=weight_decay)

    def bad(key: str, rule: str) -> SegleakError:
        return SegleakError(f"training defense {name!r} needs {key} {rule}, got {params[key]!r}")

    if name == "label_smoothing":
        if not 0 < values["eps"] < 1:
            raise bad("eps", "in (0, 1)")
        return TrainingRecipe(epochs, weight_decay, label_smoothing=values["eps"])
    if name == "mixup":
        if not values["alpha"] > 0:
            raise bad("alpha", "> 0")
        return TrainingRecipe(epochs, weight_decay, mixup_alpha=values["alpha"])
    if name == "weight_decay":
        if not values["value"] >= 0:
            raise bad("value", ">= 0")
        return TrainingRecipe(epochs, values["value"])
    if name == "early_stopping":
        if not 0 < values["fraction"] <= 1:
            raise bad("fraction", "in (0, 1]")
        return TrainingRecipe(max(1, math.ceil(values["fraction"] * epochs)), weight_decay)
    if name == "dp_sgd":
        if not values["max_grad_norm"] > 0:
            raise bad("max_grad_norm", "> 0")
        if ("noise_multiplier" in values) == ("target_epsilon" in values):
            raise SegleakError(
                f"training defense 'dp_sgd' needs exactly one of noise_multiplier or target_epsilon, got {sorted(given)}"
            )
        if "noise_multiplier" in values and not values["noise_multiplier"] >= 0:
            raise bad("noise_multiplier", ">= 0")
        if "target_epsilon" in values and not values["target_epsilon"] > 0:
            raise bad("target_epsilon", "> 0")
        if "delta" in values and not 0 < values["delta"] < 1:
            raise bad("delta", "in (0, 1)")
        return TrainingRecipe(
            epochs,
            weight_decay,
            dp=DPParams(
                max_grad_norm=values["max_grad_norm"],
                noise_multiplier=values.get("noise_multiplier"),
                target_epsilon=values.get("target_epsilon"),
                delta=values.get("delta"),
            ),
        )
    return plain
