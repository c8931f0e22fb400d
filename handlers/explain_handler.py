"""Generic TorchServe explain handler: the input kind (image, tabular, text) comes from the
archive's explain config. /predictions and /explanations, per-item batching.

Thin: the logic is ``explain_serve.serving.service.ExplainService``.
"""
from ts.torch_handler.base_handler import BaseHandler

from explain_serve.serving.service import ExplainService


class ExplainHandler(BaseHandler):
    def initialize(self, context):
        self.context = context
        self.service = ExplainService.from_context(context)
        self.model = self.service.model
        from explain_serve.export.serving import install  # ONNX Runtime artifacts, when the archive has them

        install(self.service)
        self.initialized = True

    def handle(self, data, context):
        """One JSON answer per request of the batch, with its own status."""
        return self.service.handle_context(data, context)
