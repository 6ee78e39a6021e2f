"""Small shared utilities: statistics for success rates and image fidelity, video writing."""

from wlarl.utils.stats import binary_confusion, precision_recall, psnr, success_summary, wilson_interval

__all__ = ["binary_confusion", "precision_recall", "psnr", "success_summary", "wilson_interval"]
