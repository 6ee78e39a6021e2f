"""The success classifier behind the `subgoal_success` reward, one module per job.

- `model`: `SuccessClassifierConfig`, `SuccessClassifier` (frame + task → calibrated success probability, and with
  ``progress_head`` a progress in [0, 1] regressed on the simulator's shaped reward), `load_success_classifier`.
- `labels`: frame labels, hard / early negatives and boundary frames from an episode dataset (`FrameSet`),
  splits by episode, sampling weights.
- `calibration`: AUROC, reliability table, ECE, Platt scaling, threshold choice.
- `training`: augmentation, the training loop, calibration and evaluation of a model, World-Expert-predicted frames.

The rewards that score predicted subgoal images with it are in `rewards.subgoal_success` (`subgoal_success`, and
`subgoal_progress` for a model with a progress head).
"""

from rewards.success_classifier.calibration import (
    auroc,
    choose_threshold,
    classification_metrics,
    expected_calibration_error,
    fit_platt,
    format_reliability,
    reliability_table,
)
from rewards.success_classifier.labels import (
    PROGRESS_SCALE,
    REQUIRED_COLUMNS,
    FrameSet,
    boundary_mask,
    early_negative_mask,
    frame_labels,
    frame_progress,
    frames_from_dataset,
    frames_from_datasets,
    hard_negative_mask,
    sampling_weights,
    split_by_episode,
)
from rewards.success_classifier.model import (
    SuccessClassifier,
    SuccessClassifierConfig,
    images_to_float,
    load_success_classifier,
)
from rewards.success_classifier.training import (
    augment_images,
    calibrate_classifier,
    evaluate_classifier,
    predicted_frames,
    progress_metrics,
    train_success_classifier,
)

__all__ = [
    "PROGRESS_SCALE",
    "REQUIRED_COLUMNS",
    "FrameSet",
    "SuccessClassifier",
    "SuccessClassifierConfig",
    "augment_images",
    "auroc",
    "boundary_mask",
    "calibrate_classifier",
    "choose_threshold",
    "classification_metrics",
    "early_negative_mask",
    "evaluate_classifier",
    "expected_calibration_error",
    "fit_platt",
    "format_reliability",
    "frame_labels",
    "frame_progress",
    "frames_from_dataset",
    "frames_from_datasets",
    "hard_negative_mask",
    "images_to_float",
    "load_success_classifier",
    "predicted_frames",
    "progress_metrics",
    "reliability_table",
    "sampling_weights",
    "split_by_episode",
    "train_success_classifier",
]
