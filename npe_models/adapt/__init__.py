"""Prior shift after deployment: estimate the class mix of unlabeled data, fold it into the classifier, follow a stream.

Which posterior a model's logits approximate decides the *source prior* the estimators reweight:

- NPE-LA (an NPE model's eval output, merged or not), the logit-adjusted loss (LA), post-hoc LA
  and cross-entropy minus its log training prior give **balanced** logits: ``softmax`` of them
  approximates ``p(y | x)`` under a uniform prior, i.e. ``log p(x | y)`` up to a per-image
  constant. Their source prior is uniform (``source_prior=None``), so NPE models need no
  training counts.
- Plain cross-entropy gives **source-prior** logits: ``softmax`` approximates ``p_s(y | x)``
  under the training prior, which must be passed as ``source_prior`` (the training counts).

Deployment under a target prior ``pi_t`` then predicts ``argmax(balanced logits + log pi_t)``.
:func:`em_prior` estimates ``pi_t`` by maximum likelihood (EM, Saerens et al. 2002) and is best run on
logits calibrated by :func:`fit_bcts` (bias-corrected temperature scaling, Alexandari et al. 2020);
:func:`bbse_prior` (black-box shift estimation, Lipton et al. 2018) needs only hard predictions.
:func:`adapt_prior` folds the estimate (and the calibration) into the final bias, so the adapted
model is the plain base architecture; :class:`OnlinePriorEstimator` and
:class:`StreamingPriorAdapter` follow a drifting class mix.

CIFAR-LT calibration data (:func:`cifar_calibration_set`): the training images the long-tailed
subset leaves out (37,594 of CIFAR-10's 50,000 at rho 100), never the test set; the largest class
has none, so its calibration images are training images. Calibration images must pass through the
deployment's image pipeline (e.g. its JPEG compression), or the label-shift assumption breaks
(benchmarks/RESULTS.md, issue 14). :func:`adapt_source` is ``npe-models adapt``.
The estimators are in :mod:`.prior`, the command's work in :mod:`.source`.
"""

from ..describe import TARGET_PRIOR_KEY
from .prior import (
    Calibration,
    OnlinePriorEstimator,
    StreamingPriorAdapter,
    adapt_prior,
    bbse_prior,
    em_prior,
    fit_bcts,
    total_variation,
)
from .source import (
    MAX_PRIOR_STD,
    MIN_UNLABELED_PER_CLASS,
    PriorAdaptation,
    adapt_source,
    cifar_calibration_set,
    format_adaptation,
    predict_logits,
    prior_spread,
    read_class_folders,
    read_images,
)

__all__ = [
    "TARGET_PRIOR_KEY",
    "Calibration",
    "fit_bcts",
    "em_prior",
    "bbse_prior",
    "total_variation",
    "adapt_prior",
    "OnlinePriorEstimator",
    "StreamingPriorAdapter",
    "predict_logits",
    "MIN_UNLABELED_PER_CLASS",
    "MAX_PRIOR_STD",
    "prior_spread",
    "cifar_calibration_set",
    "read_images",
    "read_class_folders",
    "PriorAdaptation",
    "adapt_source",
    "format_adaptation",
]
