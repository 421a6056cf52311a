"""sqlflow-playground: a mutual-TLS gateway that gives notebook users private databases."""
from .config import Config, load_config
from .errors import (BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge,
                     PlaygroundError, QuotaExceeded, Unavailable, Unprocessable)

__version__ = "0.2.0"

__all__ = ["Config", "load_config", "PlaygroundError", "BadRequest", "Forbidden", "NotFound",
           "Conflict", "PayloadTooLarge", "Unprocessable", "QuotaExceeded", "Unavailable"]
