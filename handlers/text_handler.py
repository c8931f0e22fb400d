"""TorchServe handler for text classification models: /predictions and /explanations.

Thin: the logic (per-item parsing, grouping, baselines, hooks, encoding) is
``explain_serve.serving.service.ExplainService``; the model's explain config is in the archive.
"""
from ts.torch_handler.base_handler import BaseHandler

from explain_serve.serving.service import ExplainService


class TextExplainHandler(BaseHandler):
    kind = "text"

    def initialize(self, context):
        self.context = context
        self.service = ExplainService.from_context(context, kind=self.kind)
        self.model = self.service.model
        from explain_serve.export.serving import install  # ONNX Runtime artifacts, when the archive has them

        install(self.service)
        self.initialized = True

    def handle(self, data, context):
        """One JSON answer per request of the batch, with its own status."""
        return self.service.handle_context(data, context)
