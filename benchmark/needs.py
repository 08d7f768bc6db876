"""The inputs a component can ask the plan for (its `needs`), declared once: a component naming a token that is
not here is refused when it registers (benchmark.registry), and the planner provides each one in one place
(attack inputs: ray_jobs.grid.plan and .bank; training inputs: TRAINING_INPUTS in ray_jobs.grid.builder)."""

from __future__ import annotations

# what an attack reads
SHADOW = "shadow"  # the shadow model's outputs on its own members and non-members
REFERENCES = "references"  # a bank of reference models trained on subsets of the attacker's pool
ONLINE_REFERENCES = "online_references"  # ... a bank whose pool includes the victim's query images
POPULATION = "population"  # the victim's outputs on the attacker's population images (RMIA's z)
ATTACK_NEEDS: dict[str, str] = {
    SHADOW: "the shadow model's outputs with membership",
    REFERENCES: "a reference-model bank (offline: never trained on a victim query image)",
    ONLINE_REFERENCES: "the online reference bank (its pool includes the victim's query images)",
    POPULATION: "the victim's outputs on the attacker's population images",
}

# what a training-side defense trains with
TEACHER = "teacher"  # the checkpoint of the same model trained undefended
REFERENCE_SET = "reference_set"  # non-member images of the same distribution
TRAINING_NEEDS: dict[str, str] = {
    TEACHER: "the same model trained without the defense (a distilled student's teacher)",
    REFERENCE_SET: "non-member reference images (splits.<kind>.reference per role)",
}
