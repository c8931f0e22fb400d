"""Shared machinery of the attribution core: one owner per idea.

- ``inputs``: tuple/non-tuple conventions, baselines, additional forward args, running the forward.
- ``targets``: every target form Captum accepts, selected and expanded in one place.
- ``batching``: the one chunking mechanism behind Captum's several batch-size arguments.
- ``quadrature``: Riemann and Gauss-Legendre rules shared by every path method.
- ``hooks``: the one owner of hook registration (``HookSession``).
- ``layers``: taps on a layer (capture, substitute, stop after it) behind every layer and neuron
  method, and the one "gradient w.r.t. a layer" helper.
- ``gradients``: gradients of the selected outputs with respect to inputs.
"""
