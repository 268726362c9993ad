"""ALLTKN gateway integration: settings, client, chat service, errors and logging."""

__version__ = "0.1.0"
