"""What the object stores (S3, Azure Blob, GCS) share: the upload engine, piece planning, spooled pieces."""
