"""Ensembling from stored features: the per-model feature store and the streaming top-k over linear heads."""

from lossguided.ensemble.combine import HeadFeatures, ScanChoice, choose_scan, ensemble_topk, logit_memory_bytes
from lossguided.ensemble.store import FeatureSet, FeatureWriter, check_compatible, open_features

# extract_features and predict_ensemble need the model code: import them from their modules

__all__ = [
    "FeatureSet",
    "FeatureWriter",
    "HeadFeatures",
    "ScanChoice",
    "check_compatible",
    "choose_scan",
    "ensemble_topk",
    "logit_memory_bytes",
    "open_features",
]
