"""The error raised for bad arguments to an attribution method.

Captum signals bad arguments (targets out of range, wrong mask shapes, batch-size-1 permutation,
...) with ``AssertionError``; Python code usually expects ``ValueError``. This class is both, so
code written against either catches it, and its message says what to fix.
"""


class AttributionArgumentError(ValueError, AssertionError):
    """A bad argument to an attribution method or summarizer (a ValueError and an AssertionError)."""
