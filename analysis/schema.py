"""The MLflow schema (the project's contract, README 'Results and the MLflow UI'): run kinds, tag, param and metric names, in one place for the
writer (ray_jobs.recording.tracking and the unit kinds) and the reader (analysis.runs)."""

from __future__ import annotations

KIND_TAG = "segleak.kind"
PARENT_TAG = "mlflow.parentRunId"
# run kinds (the tag's values): a grid cell is "attack" by contract; a fitted attack model is a unit kind
# called "fit" and has no run of its own (its figures are logged with the cells that use it)
INVOCATION, MODEL, CELL, BLIND, AUDIT = "invocation", "model", "attack", "blind", "audit"

UNIT_TAG = "segleak.unit"
SETTING_TAG = "segleak.setting"
PLACEBO_TAG = "segleak.placebo"
ADAPTIVE_TAG = "segleak.adaptive"
CHECKPOINT_TAG = "segleak.checkpoint"
ERROR_TAG = "segleak.error"
REFUSED_TAG = "segleak.refused"
MISSING_PREFIX = "segleak.missing."
SELECTION_TAG = "segleak.selection"
TUNED_TAG = "segleak.tuned"  # an attack's hyper-parameters tuned on the attacker's data (JSON)
BANK_TAG = "segleak.bank"  # a reference model's bank: offline or online
REFERENCE_INDEX_TAG = "segleak.reference_index"
# a unit's run is logged once per experiment, by the first invocation that finishes it, and nested under that
# invocation's run; every invocation that uses it (a resumed or a concurrent one) tags it with MEMBER_PREFIX +
# its own parent run id, so an invocation's runs are its nested runs plus the runs carrying its tag
MEMBER_PREFIX = "segleak.in."
# who runs an invocation: a later invocation closes a RUNNING parent run whose process is provably gone
HOST_ID_TAG, PID_TAG, PID_START_TAG = "segleak.host_id", "segleak.pid", "segleak.pid_start"
LEADERBOARD_TAG = "segleak.leaderboard"
# the invocation's param naming each grid dataset's source, JSON {name: "synthetic" | "real"}: the embedded
# synthetic twins carry real datasets' names, and the report must never present them as the real data
DATA_SOURCES_PARAM = "data_sources"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI (Markdown)
# the experiment's kind in MLflow 3 ("Model training"); a fresh browser still opens it on the GenAI overview
# unless the address says workflowType=machine_learning, as `segleak ui` prints it (analysis.ui)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def run_name(setting: str, defense: str, what: str, detail: str, control: str = "none") -> str:
    """Every kind names its runs alike: setting · defense · attack (or a model's role) · arch, data, overlap,
    seed [· control], so two runs differ in name where they differ in what they measured."""
    return " · ".join([setting, defense, what, detail, *([control] if control != "none" else [])])


def member_tag(parent_run_id: str) -> str:
    """The tag that lists a unit's run among the runs of the invocation `parent_run_id`."""
    return f"{MEMBER_PREFIX}{parent_run_id}"

# one parameter vocabulary across run kinds: a cell logs its victim's arch as `arch` and its shadow's overlap
# with the victim's members as `overlap`, as model, audit and blind runs name them (readers take either name)
LOGGED_AS = {"victim_arch": "arch", "shadow_overlap": "overlap"}

CELL_PARAMS = (
    "dataset", "victim_arch", "shadow_dataset", "shadow_arch", "shadow_overlap", "defense", "defense_params",
    "attack", "representation", "seed", "control", "attack_label", "defense_label", "placebo_model",
)
CELL_METRICS = (
    "auc", "auc_ci_low", "auc_ci_high", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_ci_low", "tpr_at_1pct_fpr_ci_high",
    "tpr_at_0.1pct_fpr", "tpr_at_0.1pct_fpr_ci_low", "tpr_at_0.1pct_fpr_ci_high", "balanced_accuracy",
    "precision", "recall", "victim_miou", "n_members", "n_nonmembers", "n_groups", "n_excluded",
    "calibration_auc", "calibration_auc_low", "dp_epsilon", "dp_delta", "auc_fold_even", "auc_fold_odd",
)
MODEL_PARAMS = ("dataset", "arch", "role", "train_defense", "overlap", "seed", "n_train")
MODEL_METRICS = ("miou_train", "miou_heldout", "loss_train", "loss_heldout", "dp_epsilon", "dp_delta",
                 "dp_noise_multiplier")
BLIND_PARAMS = ("dataset", "shadow_dataset", "setting", "seed", "overlap")
BLIND_METRICS = ("blind_auc", "blind_auc_ci_low", "blind_auc_ci_high", "shift_auc", "shift_null_low",
                 "shift_null_high", "shift_p_value", "n_members", "n_nonmembers", "n_groups")
AUDIT_PARAMS = ("dataset", "arch", "setting", "seed", "defense", "defense_params", "defense_label", "control",
                "score", "kinds")
# the bound over all canaries, its test (k per side, guesses, correct), the ceiling (every guess right), the
# audited model's accountant; each kind's own bound as <kind>_<metric>
AUDIT_KIND_METRICS = ("eps_lower", "k", "guesses", "correct", "m", "n_included", "ceiling", "n_tests")
AUDIT_METRICS = (*AUDIT_KIND_METRICS, "level", "delta", "confidence", "dp_epsilon", "dp_noise_multiplier",
                 "miou_heldout", "miou_train")
