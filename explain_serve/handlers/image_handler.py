"""TorchServe handler for image classification models: /predictions and /explanations.

Thin: the logic (per-item parsing, grouping, baselines, hooks, encoding) is
``explain_serve.serving.service.ExplainService``; the model's explain config is in the archive.
"""
from explain_serve.serving.handler import ExplainHandlerBase


class ImageExplainHandler(ExplainHandlerBase):
    kind = "image"
