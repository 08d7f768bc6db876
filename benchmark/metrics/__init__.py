"""Metrics: membership inference (`membership`) and segmentation utility (`segmentation`)."""

from benchmark.metrics.membership import membership_metrics, roc_curve

__all__ = ["membership_metrics", "roc_curve"]
