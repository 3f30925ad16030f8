"""Where upload bytes live. Each store is its own module; the protocols in :mod:`.base` say what a store is."""

from .base import (
    Annotatable,
    Capabilities,
    Concatenatable,
    DataStore,
    Expirable,
    Expiring,
    LengthDeferrable,
    Listable,
    Prepared,
    ReadPreparing,
    Ready,
    Reclaiming,
    Terminatable,
    Timestamped,
    Upload,
    Verifiable,
    capabilities,
)
from .file import FileStore, FileUpload
from .s3 import S3Store, S3Upload

__all__ = [
    "Annotatable",
    "Capabilities",
    "Concatenatable",
    "DataStore",
    "Expirable",
    "Expiring",
    "FileStore",
    "FileUpload",
    "LengthDeferrable",
    "Listable",
    "Prepared",
    "ReadPreparing",
    "Ready",
    "Reclaiming",
    "S3Store",
    "S3Upload",
    "Terminatable",
    "Timestamped",
    "Upload",
    "Verifiable",
    "capabilities",
]
