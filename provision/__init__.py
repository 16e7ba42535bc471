"""provision: one YAML manifest -> a running, verified Xinference model stack for RAGFlow."""

__version__ = "0.1.0"
