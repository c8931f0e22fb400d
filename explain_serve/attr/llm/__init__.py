"""Attribution of language model generations (Captum's ``LLMAttribution`` family).

Import from ``explain_serve.attr``; this package needs ``transformers``-style models and
tokenizers only at call time (``pip install explain-serve[llm]``).
"""
