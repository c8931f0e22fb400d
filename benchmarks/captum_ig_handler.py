"""Comparison handler for benchmarks/serve_load.py only (never shipped): Captum's IntegratedGradients
called per request, the way TorchServe's own handlers explain: one ``attribute`` call per item of
the batch, the model's JSON built with ``tolist``. Same model, n_steps and baseline as explain-serve."""
import json

import torch
from captum.attr import IntegratedGradients
from ts.torch_handler.base_handler import BaseHandler

from explain_serve.serving.config import load_file
from explain_serve.serving.service import load_model


class CaptumIGHandler(BaseHandler):
    def initialize(self, context):
        from pathlib import Path

        model_dir = Path(context.system_properties["model_dir"])
        cfg = load_file(model_dir / "explain.yaml")
        self.model = load_model(model_dir, cfg, model_dir / context.manifest["model"]["serializedFile"], None)
        torch.set_num_threads(1)  # as explain-serve workers do: the comparison is of the explain path, not threading
        self.ig = IntegratedGradients(self.model)
        self.initialized = True

    def handle(self, data, context):
        out = []
        for idx, row in enumerate(data):
            body = row.get("body") or row.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            x = torch.tensor([body["inputs"]], dtype=torch.float32)
            with torch.no_grad():
                probs = torch.softmax(self.model(x), 1)[0]
            answer = {"prediction": {"index": int(probs.argmax()), "probabilities": probs.tolist()}}
            if context.get_request_header(idx, "explain") == "True":
                target = body.get("target", "predicted")
                target = int(probs.argmax()) if target == "predicted" else int(target)
                attr = self.ig.attribute(x, target=target, n_steps=32, method="gausslegendre")
                answer["attributions"] = attr[0].tolist()
            out.append(json.dumps(answer))
        return out
