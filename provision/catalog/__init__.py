"""Xinference's built-in models: from a server, the installed package, or the shipped snapshot; lookups by
name and spec, did-you-mean, and what weights on disk say about the name they are launched under."""

from .index import Catalog, describe_choice
from .model import Family, HubSource, Spec

__all__ = ["Catalog", "Family", "HubSource", "Spec", "describe_choice"]
