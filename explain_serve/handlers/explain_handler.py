"""Generic TorchServe explain handler: the input kind (image, tabular, text) comes from the
archive's explain config. /predictions and /explanations, per-item batching.

Thin: the logic is ``explain_serve.serving.service.ExplainService``.
"""
from explain_serve.serving.handler import ExplainHandlerBase


class ExplainHandler(ExplainHandlerBase):
    kind = None
