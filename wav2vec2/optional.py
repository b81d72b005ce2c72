"""Optional dependencies: import them by name, or fail with the pip command that installs them."""

from __future__ import annotations

import importlib
from typing import Any

#: Which extra of ``speech-ssl-compress`` provides each optional module.
EXTRAS = {
    "transformers": "hf",
    "huggingface_hub": "hf",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "matplotlib": "report",
    "tensorboard": "tensorboard",
}


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the extra that provides it."""


def require(module: str, purpose: str = "") -> Any:
    """``importlib.import_module(module)``, or :class:`MissingExtraError` with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        extra = EXTRAS.get(module.split(".")[0], "all")
        why = f" for {purpose}" if purpose else ""
        raise MissingExtraError(
            f"{module} is needed{why} but is not installed; install it with: pip install 'speech-ssl-compress[{extra}]'"
        ) from error


def available(module: str) -> bool:
    """True when ``module`` can be imported."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
