"""The error raised for bad arguments to an attribution method.

Captum signals bad arguments (targets out of range, wrong mask shapes, batch-size-1 permutation,
...) with ``AssertionError``; Python code usually expects ``ValueError``. This class is both, so
code written against either catches it, and its message says what to fix.
"""


class AttributionArgumentError(ValueError, AssertionError):
    """A bad argument to an attribution method or summarizer (a ValueError and an AssertionError)."""


class IndexOutOfRangeError(AttributionArgumentError, IndexError):
    """A target or neuron index outside the output or layer (also an IndexError, as torch raises)."""


def check_index(index, shape, what: str) -> None:
    """Raise ``IndexOutOfRangeError`` unless the int entries of ``index`` fit ``shape`` (slices pass)."""
    for dim, (i, size) in enumerate(zip(index, shape)):
        if isinstance(i, int) and not -size <= i < size:
            raise IndexOutOfRangeError(
                f"{what} {tuple(index) if len(index) > 1 else index[0]} is out of range for shape "
                f"{tuple(shape)} after the batch axis: index {dim} must be in {-size}..{size - 1}"
            )
