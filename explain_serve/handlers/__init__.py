"""TorchServe handler entry files, shipped inside the package so an installed wheel can archive.

``explain-serve archive`` passes one of these files to torch-model-archiver, which copies it into
the .mar; the worker then imports it by file and it imports ``explain_serve.serving.handler``.
The top-level ``handlers/`` folder of the repository holds byte-identical copies for people who
call torch-model-archiver themselves (a test keeps them equal; ``copy_to("handlers")`` rewrites them).
"""
from __future__ import annotations

import shutil
from pathlib import Path

DIR = Path(__file__).resolve().parent
FILES = {"image": "image_handler.py", "tabular": "tabular_handler.py", "text": "text_handler.py",
         "causal_lm": "causal_lm_handler.py", None: "explain_handler.py"}


def path(kind):
    """The handler entry file for an input kind (None: the kind comes from the archive's config)."""
    return DIR / FILES[kind]


def copy_to(folder: Path) -> None:
    """Write the entry files into ``folder`` (the repository's top-level ``handlers/``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        shutil.copyfile(DIR / name, Path(folder) / name)

