"""IST0106: what validation would refuse (files analyzed before they are applied)."""

from __future__ import annotations

from pilotfish.analysis.config import Config
from pilotfish.analysis.messages import Message, new
from pilotfish.api.validation import validate
from pilotfish.objects import Obj


def schema_errors(config: Config) -> list[Message]:
    """IST0106 for every reason pilotfish would refuse the object."""
    return [
        new("SchemaValidationError", obj, str(error))
        for obj in config.all()
        for error in validate(obj)
    ]


__all__ = ["Obj", "schema_errors"]
