"""The TorchServe handler body shared by the handler modules in ``handlers/``.

TorchServe loads the one class *defined* in a handler module (imported classes do not count), so
each module there subclasses ``ExplainHandlerBase`` and names its input kind; the logic is
``ExplainService``.
"""
from __future__ import annotations

from typing import Optional

from ts.torch_handler.base_handler import BaseHandler

from . import describe
from .service import ExplainService


class ExplainHandlerBase(BaseHandler):
    kind: Optional[str] = None  # None: the kind comes from the archive's explain config

    def initialize(self, context):
        from ..export.serving import install  # ONNX Runtime artifacts, when the archive has them

        self.context = context
        self.service = ExplainService.from_context(context, kind=self.kind)
        self.model = self.service.model
        install(self.service)
        self.initialized = True

    def handle(self, data, context):
        """One JSON answer per request of the batch, with its own status."""
        if context is not None and context.get_request_header(0, "describe") == "True":  # ?customized=true
            return [self.describe_handle()]
        return self.service.handle_context(data, context)

    def describe_handle(self):
        """TorchServe's customized describe: the model's self-description (``serving.describe``)."""
        return describe.to_json(self.service)
