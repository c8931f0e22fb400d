"""TorchServe serving of explanations next to predictions.

- ``config``: the per-model explain config packed in the archive (defaults, limits, baselines).
- ``methods``: the wire names of the attribution methods, their parameters and limits.
- ``baselines``: named baselines, computed when archiving or when the model loads (blur per request).
- ``requests``: reading and validating one request item (JSON body, raw image, gRPC inputs).
- ``service``: the handler logic: per-item parsing, grouping, one core call per group, encoding.
- ``encode``: compact JSON, heat map PNGs, response-size estimates.
- ``archive``: packing a model and its explain config into a .mar.
- ``server``: starting and stopping a TorchServe process (config.properties, ports, token file).
- ``soak``: many mixed requests against a running server, each answer checked against the in-process one.

Nothing here imports Captum; the attribution core is ``explain_serve.attr``.
"""
