"""Content keys: every cached output's path is derived from what shaped it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_LENGTH = 16


def key_of(*parts: Any) -> str:
    """A short stable hex key of JSON-serialisable ``parts``."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:KEY_LENGTH]
