"""Machine learning on DataFrames: features, evaluation, the failure model, anomaly detectors, reports, the DVC
pipeline's stages, the model registry, retraining, and the papermill kernel (`kernel`, hand-written)."""
from .._lazy import lazy_exports
__getattr__, __dir__ = lazy_exports(__name__, ['features', 'evaluate', 'models', 'detect', 'report', 'pipeline',
                                                'registry', 'retrain'])
