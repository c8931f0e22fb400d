"""explain-serve: attributions for PyTorch models, served next to their predictions.

``explain_serve.attr`` mirrors Captum's public API (switch by changing one import);
``explain_serve.metrics`` and ``explain_serve.visualization`` mirror ``captum.metrics`` and
``captum.attr.visualization``. The core never imports Captum.
"""
__version__ = "0.1.0"
