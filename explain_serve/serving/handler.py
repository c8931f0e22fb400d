"""The TorchServe handler body shared by the handler entry files in ``explain_serve/handlers/``.

TorchServe loads the one class *defined* in a handler module (imported classes do not count), so
each module there subclasses ``ExplainHandlerBase`` and names its input kind; the logic is
``ExplainService``.
"""
from __future__ import annotations

import logging
from typing import Optional

from ts.torch_handler.base_handler import BaseHandler

from . import describe
from .server import load_failed_line
from .service import ExplainService

logger = logging.getLogger(__name__)


class ExplainHandlerBase(BaseHandler):
    kind: Optional[str] = None  # None: the kind comes from the archive's explain config
    service_class = ExplainService  # a ``TorchServeEntry``: CausalLMService for causal_lm archives

    def initialize(self, context):
        from ..export.serving import install  # ONNX Runtime artifacts, when the archive has them

        self.context = context
        try:
            self.service = self.service_class.from_context(context, kind=self.kind)
        except Exception as exc:  # one greppable line with the cause (server.load_error reads it), then die
            name = getattr(context, "model_name", None) or (context.manifest or {}).get("model", {}).get("modelName")
            logger.error(load_failed_line(str(name), exc))
            raise
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
