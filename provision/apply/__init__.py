"""`up`: the stages that make the manifest true, sequenced in one place (sequence.py)."""

from .run import UpResult
from .sequence import up

__all__ = ["UpResult", "up"]
