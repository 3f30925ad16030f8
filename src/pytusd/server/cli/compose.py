"""Flags -> objects: the store, locker, hooks and rules they name, composed into one :class:`pytusd.Config`."""


from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from ...core import rules as rules_module
from ...core.config import Config, CorsConfig
from ...core.rules import UploadProfiles, UploadRules
from ...hooks import (
    DEFAULT_ENABLED_HOOKS,
    FileHookBackend,
    FireboomHookBackend,
    HookBackend,
    Hooks,
    HttpHookBackend,
    PythonHookBackend,
)
from ...hooks.outbox import FolderOutbox, Outbox, RedisOutbox
from ...lockers import FileLocker, Locker, MemoryLocker
from ...stores import DataStore, FileStore


def hook_events(args: argparse.Namespace, own: str) -> list[str]:
    """The events of one hook backend: its own ``--hooks-<backend>-events``, else ``--hooks-enabled-events``."""
    chosen = own or args.hooks_enabled_events
    return [e.strip() for e in chosen.split(",") if e.strip()] or list(DEFAULT_ENABLED_HOOKS)


def hooks_from_args(args: argparse.Namespace) -> Hooks | None:
    """Every hook backend given on the command line, each for ``--hooks-<backend>-events`` or, by default, for
    ``--hooks-enabled-events``."""

    def events(own: str) -> list[str]:
        return hook_events(args, own)

    bindings: list[tuple[HookBackend, list[str]]] = []
    if args.hooks_dir:
        bindings.append((FileHookBackend(args.hooks_dir, timeout=args.hooks_file_timeout), events(args.hooks_dir_events)))
    if args.hooks_http:
        backend = HttpHookBackend(
            args.hooks_http,
            forward_headers=args.hooks_http_forward_headers.split(","),
            retry=args.hooks_http_retry,
            backoff=args.hooks_http_backoff,
            timeout=args.hooks_http_timeout or 15.0,
            size_limit=args.hooks_http_size_limit,
            verify=not args.hooks_http_skip_verify,
        )
        bindings.append((backend, events(args.hooks_http_events)))
    if args.hooks_python:
        bindings.append((PythonHookBackend.from_spec(args.hooks_python), events(args.hooks_python_events)))
    if args.hooks_grpc:
        from ...hooks.grpc import GrpcHookBackend

        grpc_backend = GrpcHookBackend(
            args.hooks_grpc,
            retry=args.hooks_grpc_retry,
            backoff=args.hooks_grpc_backoff,
            secure=args.hooks_grpc_secure,
            server_certificate=args.hooks_grpc_server_tls_certificate,
            client_certificate=args.hooks_grpc_client_tls_certificate,
            client_key=args.hooks_grpc_client_tls_key,
            forward_headers=args.hooks_grpc_forward_headers.split(","),
        )
        bindings.append((grpc_backend, events(args.hooks_grpc_events)))
    if args.hooks_fireboom:
        fireboom = FireboomHookBackend(args.hooks_fireboom, args.hooks_fireboom_storage, args.hooks_fireboom_profile)
        bindings.append((fireboom, ["pre-create", "post-finish", "post-terminate"]))
    if not bindings:
        return None
    return Hooks(bindings=bindings, progress_interval=args.progress_hooks_interval or 1.0)


def outbox_from_args(args: argparse.Namespace) -> Outbox | None:
    """--hooks-durable's outbox, where the deployment already shares state: an explicit --hooks-durable-dir, else
    Redis when the locker is Redis (every host sees it), else a folder in --upload-dir (where the file store and the
    file locker already are)."""
    if not args.hooks_durable:
        return None
    store: FolderOutbox | RedisOutbox
    if args.hooks_durable_dir:
        store = FolderOutbox(args.hooks_durable_dir, file_io=args.file_io)
    elif args.locker == "redis":
        store = RedisOutbox(args.redis_url)
    else:
        store = FolderOutbox(os.path.join(args.upload_dir, ".hooks-outbox"), file_io=args.file_io)
    return Outbox(
        store, max_attempts=args.hooks_durable_max_attempts, max_age=args.hooks_durable_max_age,
        backoff=args.hooks_durable_backoff or 1.0, max_backoff=max(args.hooks_durable_max_backoff,
                                                                  args.hooks_durable_backoff or 1.0),
        lease=args.hooks_durable_lease or 30.0, poll_interval=args.hooks_durable_poll_interval or 1.0,
    )


def rules_from_args(args: argparse.Namespace) -> UploadRules | UploadProfiles | None:
    """Upload rules from --upload-rules (one set, or named profiles), with the single-rule flags overriding the
    entries of a file of one set."""
    loaded = rules_module.from_file(args.upload_rules) if args.upload_rules else UploadRules()
    single = [flag for flag, value in (("--allowed-types", args.allowed_types),
                                       ("--allowed-extensions", args.allowed_extensions),
                                       ("--required-metadata", args.required_metadata)) if value]
    if isinstance(loaded, UploadProfiles):
        if single:
            raise ValueError(f"{', '.join(single)} cannot apply to upload profiles: put the rule in each profile of "
                             f"{args.upload_rules}")
        return loaded
    rules = loaded

    def listed(text: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in text.split(",") if x.strip())

    changes: dict[str, Any] = {
        name: listed(value)
        for name, value in (
            ("allowed_types", args.allowed_types),
            ("allowed_extensions", args.allowed_extensions),
            ("required_metadata", args.required_metadata),
        )
        if value
    }
    rules = dataclasses.replace(rules, **changes) if changes else rules
    return None if rules.empty else rules


def store_from_args(args: argparse.Namespace) -> DataStore:
    """The storage the flags name: S3, GCS or Azure when its bucket or container is set, else the upload directory
    (tusd's order of precedence; naming two is an error rather than a silent choice)."""
    named = [flag for flag, value in (("--s3-bucket", args.s3_bucket), ("--gcs-bucket", args.gcs_bucket),
                                       ("--azure-storage", args.azure_storage)) if value]
    if len(named) > 1:
        raise ValueError(f"choose one storage: {' and '.join(named)} were both given")
    if args.gcs_bucket:
        from ...stores.gcs import GCSStore

        return GCSStore.from_options(args.gcs_bucket, object_prefix=args.gcs_object_prefix, endpoint=args.gcs_endpoint)
    if args.azure_storage:
        from ...stores.azure import AzureStore

        return AzureStore.from_options(
            args.azure_storage,
            object_prefix=args.azure_object_prefix,
            endpoint=args.azure_endpoint,
            container_access_type=args.azure_container_access_type,
            blob_access_tier=args.azure_blob_access_tier,
        )
    if args.s3_bucket:
        from ...stores.s3 import S3Store, make_client

        client = make_client(
            endpoint=args.s3_endpoint,
            disable_ssl=args.s3_disable_ssl,
            max_pool_connections=max(10, args.s3_concurrent_part_uploads) + 16,
            transfer_acceleration=args.s3_transfer_acceleration,
        )
        return S3Store(
            args.s3_bucket,
            client,
            object_prefix=args.s3_object_prefix,
            metadata_object_prefix=args.s3_metadata_object_prefix,
            part_size=args.s3_part_size,
            min_part_size=args.s3_min_part_size,
            max_buffered_parts=args.s3_max_buffered_parts,
            concurrent_part_uploads=args.s3_concurrent_part_uploads,
            disable_content_hashes=args.s3_disable_content_hashes,
            log_api_calls=args.s3_log_api_calls,
            readable_uploads=args.s3_readable_uploads,
            content_md5=args.s3_content_md5,
        )
    return FileStore(
        args.upload_dir, dir_perms=args.dir_perms, file_perms=args.file_perms, fsync=args.fsync, file_io=args.file_io
    )


def locker_from_args(args: argparse.Namespace, store: DataStore) -> Locker:
    kind = args.locker or ("file" if isinstance(store, FileStore) else "memory")
    if kind == "memory":
        return MemoryLocker()
    if kind == "redis":
        from ...lockers.redis import RedisLocker

        return RedisLocker(args.redis_url, ttl=args.redis_lock_ttl or 5.0)
    if not isinstance(store, FileStore):
        os.makedirs(args.upload_dir, exist_ok=True)  # the lock files' home when the uploads live elsewhere
    return FileLocker(
        args.upload_dir,
        holder_poll_interval=args.filelock_holder_poll_interval,
        acquirer_poll_interval=args.filelock_acquirer_poll_interval,
        file_io=args.file_io,
    )


def config_from_args(args: argparse.Namespace) -> Config:
    store = store_from_args(args)
    locker = locker_from_args(args, store)
    hooks = hooks_from_args(args)
    outbox = outbox_from_args(args)
    if outbox is not None:
        if hooks is None:
            raise ValueError("--hooks-durable needs a hook backend (--hooks-http, --hooks-dir, ...)")
        hooks.use_outbox(outbox)
    return Config(
        store=store,
        locker=locker,
        base_path=args.base_path,
        max_size=args.max_size,
        max_metadata_size=args.max_metadata_size,
        max_metadata_pairs=args.max_metadata_pairs,
        max_concat_partials=args.max_concat_partials,
        behind_proxy=args.behind_proxy,
        disable_download=args.disable_download,
        disable_termination=args.disable_termination,
        disable_concatenation=args.disable_concatenation,
        disable_concatenation_unfinished=args.disable_concatenation_unfinished,
        cors=CorsConfig(
            disable=args.disable_cors,
            allow_origin=args.cors_allow_origin,
            allow_credentials=args.cors_allow_credentials,
            allow_methods=args.cors_allow_methods,
            allow_headers=args.cors_allow_headers,
            expose_headers=args.cors_expose_headers,
            max_age=args.cors_max_age,
        ),
        # 0 means "the default", as in tusd.
        network_timeout=args.network_timeout or 60.0,
        acquire_lock_timeout=args.acquire_lock_timeout or 20.0,
        request_completion_timeout=args.request_completion_timeout or 10.0,
        min_body_rate=args.min_body_rate,
        max_concurrent_uploads=args.max_concurrent_uploads,
        max_uploads_per_client=args.max_uploads_per_client,
        show_greeting=args.show_greeting,
        upload_page=args.upload_page,
        expiration=args.expiration,
        hooks=hooks,
        rules=rules_from_args(args),
        enable_experimental_protocol=args.enable_experimental_protocol,
        expiration_cleanup_interval=args.expiration_cleanup_interval or 60.0,
        digest=args.digest,
        expose_metrics=args.expose_metrics,
        metrics_path=args.metrics_path,
        health_path=args.health_path,
        ready_path=args.ready_path,
    )


