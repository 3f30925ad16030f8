"""Where upload bytes live. Each store is its own module; the protocols in :mod:`.base` say what a store is."""

from .base import (
    Concatenatable,
    DataStore,
    Expiring,
    LengthDeferrable,
    Listable,
    Terminatable,
    Timestamped,
    Upload,
    Verifiable,
)
from .file import FileStore, FileUpload
from .s3 import S3Store, S3Upload

__all__ = [
    "Concatenatable",
    "DataStore",
    "Expiring",
    "FileStore",
    "FileUpload",
    "LengthDeferrable",
    "Listable",
    "S3Store",
    "S3Upload",
    "Terminatable",
    "Timestamped",
    "Upload",
    "Verifiable",
]
