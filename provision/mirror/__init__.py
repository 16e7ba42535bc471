"""A ModelScope-hub API server over a folder of models: an intranet mirror, and the tests' hub."""

from .faults import Fault, FaultPlan
from .handler import LoggedRequest
from .server import MirrorServer, serve

__all__ = ["Fault", "FaultPlan", "LoggedRequest", "MirrorServer", "serve"]
