"""One-run privacy audits (Steinke, Nasr, Jagielski, NeurIPS 2023): canaries included in training with
probability 1/2 each, scored from the trained model's released outputs, and an epsilon lower bound from the
number of correct in/out guesses (`bound`). Importable without Ray or MLflow."""

from benchmark.audit.bound import AuditBound, audit_bound, audit_by_kind, eps_lower_bound, p_values
from benchmark.audit.canaries import CRAFTED, KINDS, MASKED, craft_label, deal_kinds
from benchmark.audit.scores import NEEDS_REFERENCE, SCORES, canary_scores, within_kind

__all__ = ["AuditBound", "CRAFTED", "KINDS", "MASKED", "NEEDS_REFERENCE", "SCORES", "audit_bound", "audit_by_kind",
           "canary_scores", "craft_label", "deal_kinds", "eps_lower_bound", "p_values", "within_kind"]
