"""Custom aggregation strategies and the reply checks that wrap every strategy."""

from fedmemes.strategies.modality_aware import ModalityAwareAvg
from fedmemes.strategies.performance_weighted import PerformanceWeightedAvg
from fedmemes.strategies.validation import ReplyChecks, with_reply_checks

__all__ = ["ModalityAwareAvg", "PerformanceWeightedAvg", "ReplyChecks", "with_reply_checks"]
