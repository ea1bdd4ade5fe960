"""Exceptions raised by the shared pipeline.

Every error that bad input can trigger derives from :class:`FedIDSError`, so a
command-line entry point can catch that one class and print its message
instead of a traceback.
"""

from __future__ import annotations


class FedIDSError(Exception):
    """Base class of every error that bad input or configuration can raise."""


class ConfigError(FedIDSError, ValueError):
    """A dataset or run configuration is missing, malformed or inconsistent."""


class DataValidationError(FedIDSError, ValueError):
    """A traffic file does not match its dataset configuration."""


class DataFileNotFoundError(DataValidationError, FileNotFoundError):
    """A traffic file named by the user or a configuration does not exist."""


class EmptyDataError(DataValidationError):
    """A traffic file or one of its splits has no usable rows."""


class PreprocessingError(FedIDSError, ValueError):
    """Preprocessing statistics are inconsistent or cannot be applied."""


class ModelMismatchError(FedIDSError, ValueError):
    """Model weights do not match the architecture they are loaded into."""


class BundleVerificationError(FedIDSError, ValueError):
    """A model bundle is unsigned, signed by another key, tampered with, truncated or malformed."""


class RegistryError(FedIDSError, RuntimeError):
    """The coordinator's model registry cannot publish, list or find a bundle."""


class PullError(FedIDSError, RuntimeError):
    """A site cannot fetch a bundle from the coordinator's model service."""


class CredentialError(FedIDSError, ValueError):
    """A TLS certificate or SuperNode authentication key is missing, invalid or would be overwritten."""


class DeploymentError(FedIDSError, RuntimeError):
    """A SuperLink or SuperNode process could not be started, reached or stopped."""
