"""Meta-gradient estimators: how one segment's contribution to the outer gradient is computed."""

from lightning_l2o.estimators.base import GradientEstimator, SegmentEstimate
from lightning_l2o.estimators.persistent_es import PersistentES
from lightning_l2o.estimators.truncated_backprop import TruncatedBackprop

__all__ = ["GradientEstimator", "PersistentES", "SegmentEstimate", "TruncatedBackprop"]
