"""User-facing errors: one message that names the file, the model and what to do."""
from __future__ import annotations

from typing import Optional


class TrtflowError(Exception):
    """An error caused by input the user can fix (config, weights, model code)."""

    def __init__(self, message: str, *, model: Optional[str] = None, path: Optional[str] = None,
                 fix: Optional[str] = None) -> None:
        parts = []
        if model:
            parts.append(f"model '{model}'")
        if path:
            parts.append(f"file '{path}'")
        head = ": ".join(parts)
        text = f"{head}: {message}" if head else message
        if fix:
            text += f"\n  fix: {fix}"
        super().__init__(text)
        self.model = model
        self.path = path
        self.fix = fix
