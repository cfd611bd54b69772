"""memos: memory as a system resource (plaintext, activation, parametric) under one governance layer.

Knows nothing of HTTP. This module is its public API: the proxy (proxy/) imports from here only (a
test parses its imports). Nothing is built at import time, and names load on first use, so that
importing one part does not import the rest (torch and transformers stay out until a local model is
used). The layout behind it: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memos.builder import (
        LocalModels,
        Memory,
        MemoryConfig,
        build_local_models,
        build_memory,
        build_scheduler,
        open_vault,
    )
    from memos.chat.contract import (
        ApiShape,
        ChatContext,
        ChatMemory,
        FinishedExchange,
        MemoryPlan,
        MemoryReason,
        MemorySwitch,
        NoChatMemory,
    )
    from memos.chat.shapes import conversation_of
    from memos.db import Database, StorageError, StorageFull, StorageUnavailable, storage_failure
    from memos.embeddings import build_embedder
    from memos.errors import Denied, Inconsistent, InvalidInput, MemosError, NotFound, Unavailable
    from memos.governance.acl import AccessDenied, Operation, authorize, effective_user
    from memos.governance.apikeys import ApiKeyStore, hash_key, parse_key_id
    from memos.governance.audit import AuditLog
    from memos.governance.masterkeys import (
        MasterKeySource,
        MasterKeyWatcher,
        rewrap_all,
    )
    from memos.governance.masterkeys import (
        connect as connect_master_keys,
    )
    from memos.governance.policy import Policy
    from memos.governance.policy_schema import (
        DEFAULT_SCHEMA_PATH,
    )
    from memos.governance.policy_schema import (
        check_files as check_policy_files,
    )
    from memos.governance.policy_schema import (
        schema_text as policy_schema_text,
    )
    from memos.governance.policy_schema import (
        write_schema as write_policy_schema,
    )
    from memos.governance.policy_store import PolicyStore
    from memos.governance.principal import Principal, Role
    from memos.governance.tenants import TenantEraser, default_erasers, delete_tenant
    from memos.item import MemoryItem, State
    from memos.keys.crypto import MasterKey
    from memos.keys.keyring import Keyring
    from memos.limits import (
        METADATA_MAX_DEPTH,
        METADATA_MAX_VALUES,
        NOT_BLANK_PATTERN,
        TIMESTAMP_END,
        TIMESTAMP_MIN,
        USER_ID_MAX_CHARS,
        USER_ID_PATTERN,
        YEAR_MAX,
        YEAR_MIN,
        YEAR_PATTERN,
        json_shape_problem,
        metadata_problem,
        time_problem,
        user_id_problem,
    )
    from memos.local.lora import LoraTraining
    from memos.local.model_registry import UnknownLocalModel
    from memos.local.runtime import GenerationResult, LocalMemory, SamplingParams, build_prompt
    from memos.local.scheduler import LocalMemoryUsage, MemScheduler, UserErasedMeanwhile
    from memos.logsafe import exception_summary
    from memos.memories import MAX_ENTRIES, MAX_TEXT_CHARS, Entry, MemoryService, Patch
    from memos.modes import MemoryMode
    from memos.observe import MemoryObserver
    from memos.polling import PollingThread
    from memos.portability.export_file import ExportFileError, check_passphrase, read_export, write_export
    from memos.portability.transfer import (
        ExportResult,
        ImportResult,
        InvalidExport,
        apply_import,
        audit_export,
        audit_import,
        export_records,
        parse_document,
        plan_import,
    )
    from memos.ports import AuditSink, Background, PolicySource, TextCompleter, UserDataEraser
    from memos.readiness import MemoryReadiness
    from memos.recall.injection import Injection
    from memos.recall.retrieval import Hit
    from memos.writeback.outbox import OutboxBacklog
    from memos.writeback.write_retry import RetrySnapshot, WriteRetryQueue

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    # Building memory (the composition root)
    "Memory": ("memos.builder", "Memory"),
    "MemoryConfig": ("memos.builder", "MemoryConfig"),
    "LocalModels": ("memos.builder", "LocalModels"),
    "build_local_models": ("memos.builder", "build_local_models"),
    "build_memory": ("memos.builder", "build_memory"),
    "build_scheduler": ("memos.builder", "build_scheduler"),
    "open_vault": ("memos.builder", "open_vault"),
    # Around one chat call
    "ApiShape": ("memos.chat.contract", "ApiShape"),
    "ChatContext": ("memos.chat.contract", "ChatContext"),
    "ChatMemory": ("memos.chat.contract", "ChatMemory"),
    "FinishedExchange": ("memos.chat.contract", "FinishedExchange"),
    "MemoryMode": ("memos.modes", "MemoryMode"),
    "MemoryPlan": ("memos.chat.contract", "MemoryPlan"),
    "MemoryReason": ("memos.chat.contract", "MemoryReason"),
    "MemorySwitch": ("memos.chat.contract", "MemorySwitch"),
    "NoChatMemory": ("memos.chat.contract", "NoChatMemory"),
    "conversation_of": ("memos.chat.shapes", "conversation_of"),
    # The memory API
    "MemoryService": ("memos.memories", "MemoryService"),
    "Entry": ("memos.memories", "Entry"),
    "Patch": ("memos.memories", "Patch"),
    "MAX_ENTRIES": ("memos.memories", "MAX_ENTRIES"),
    "MAX_TEXT_CHARS": ("memos.memories", "MAX_TEXT_CHARS"),
    "MemoryItem": ("memos.item", "MemoryItem"),
    "State": ("memos.item", "State"),
    "Hit": ("memos.recall.retrieval", "Hit"),
    "Injection": ("memos.recall.injection", "Injection"),
    # Limits on input (checked at the HTTP edge, published in its OpenAPI document)
    "METADATA_MAX_DEPTH": ("memos.limits", "METADATA_MAX_DEPTH"),
    "METADATA_MAX_VALUES": ("memos.limits", "METADATA_MAX_VALUES"),
    "NOT_BLANK_PATTERN": ("memos.limits", "NOT_BLANK_PATTERN"),
    "TIMESTAMP_END": ("memos.limits", "TIMESTAMP_END"),
    "TIMESTAMP_MIN": ("memos.limits", "TIMESTAMP_MIN"),
    "USER_ID_MAX_CHARS": ("memos.limits", "USER_ID_MAX_CHARS"),
    "USER_ID_PATTERN": ("memos.limits", "USER_ID_PATTERN"),
    "YEAR_MAX": ("memos.limits", "YEAR_MAX"),
    "YEAR_MIN": ("memos.limits", "YEAR_MIN"),
    "YEAR_PATTERN": ("memos.limits", "YEAR_PATTERN"),
    "json_shape_problem": ("memos.limits", "json_shape_problem"),
    "metadata_problem": ("memos.limits", "metadata_problem"),
    "time_problem": ("memos.limits", "time_problem"),
    "user_id_problem": ("memos.limits", "user_id_problem"),
    # Errors
    "MemosError": ("memos.errors", "MemosError"),
    "InvalidInput": ("memos.errors", "InvalidInput"),
    "NotFound": ("memos.errors", "NotFound"),
    "Denied": ("memos.errors", "Denied"),
    "Unavailable": ("memos.errors", "Unavailable"),
    "Inconsistent": ("memos.errors", "Inconsistent"),
    "StorageError": ("memos.db", "StorageError"),
    "StorageFull": ("memos.db", "StorageFull"),
    "StorageUnavailable": ("memos.db", "StorageUnavailable"),
    "storage_failure": ("memos.db", "storage_failure"),
    "AccessDenied": ("memos.governance.acl", "AccessDenied"),
    "UnknownLocalModel": ("memos.local.model_registry", "UnknownLocalModel"),
    "UserErasedMeanwhile": ("memos.local.scheduler", "UserErasedMeanwhile"),
    "ExportFileError": ("memos.portability.export_file", "ExportFileError"),
    "InvalidExport": ("memos.portability.transfer", "InvalidExport"),
    # Governance: who may do what, keys, policies, audit
    "Principal": ("memos.governance.principal", "Principal"),
    "Role": ("memos.governance.principal", "Role"),
    "Operation": ("memos.governance.acl", "Operation"),
    "authorize": ("memos.governance.acl", "authorize"),
    "effective_user": ("memos.governance.acl", "effective_user"),
    "Policy": ("memos.governance.policy", "Policy"),
    "PolicyStore": ("memos.governance.policy_store", "PolicyStore"),
    "DEFAULT_SCHEMA_PATH": ("memos.governance.policy_schema", "DEFAULT_SCHEMA_PATH"),
    "check_policy_files": ("memos.governance.policy_schema", "check_files"),
    "policy_schema_text": ("memos.governance.policy_schema", "schema_text"),
    "write_policy_schema": ("memos.governance.policy_schema", "write_schema"),
    "ApiKeyStore": ("memos.governance.apikeys", "ApiKeyStore"),
    "hash_key": ("memos.governance.apikeys", "hash_key"),
    "parse_key_id": ("memos.governance.apikeys", "parse_key_id"),
    "AuditLog": ("memos.governance.audit", "AuditLog"),
    "MasterKeySource": ("memos.governance.masterkeys", "MasterKeySource"),
    "MasterKeyWatcher": ("memos.governance.masterkeys", "MasterKeyWatcher"),
    "connect_master_keys": ("memos.governance.masterkeys", "connect"),
    "rewrap_all": ("memos.governance.masterkeys", "rewrap_all"),
    "TenantEraser": ("memos.governance.tenants", "TenantEraser"),
    "default_erasers": ("memos.governance.tenants", "default_erasers"),
    "delete_tenant": ("memos.governance.tenants", "delete_tenant"),
    "MasterKey": ("memos.keys.crypto", "MasterKey"),
    "Keyring": ("memos.keys.keyring", "Keyring"),
    "Database": ("memos.db", "Database"),
    # Write-back state (readiness and metrics)
    "OutboxBacklog": ("memos.writeback.outbox", "OutboxBacklog"),
    "LocalMemoryUsage": ("memos.local.scheduler", "LocalMemoryUsage"),
    "RetrySnapshot": ("memos.writeback.write_retry", "RetrySnapshot"),
    "WriteRetryQueue": ("memos.writeback.write_retry", "WriteRetryQueue"),
    "MemoryReadiness": ("memos.readiness", "MemoryReadiness"),
    # Local models (torch is imported only when one is first used)
    "MemScheduler": ("memos.local.scheduler", "MemScheduler"),
    "GenerationResult": ("memos.local.runtime", "GenerationResult"),
    "LocalMemory": ("memos.local.runtime", "LocalMemory"),
    "SamplingParams": ("memos.local.runtime", "SamplingParams"),
    "build_prompt": ("memos.local.runtime", "build_prompt"),
    "LoraTraining": ("memos.local.lora", "LoraTraining"),
    # Portability (export and import)
    "ExportResult": ("memos.portability.transfer", "ExportResult"),
    "ImportResult": ("memos.portability.transfer", "ImportResult"),
    "apply_import": ("memos.portability.transfer", "apply_import"),
    "audit_export": ("memos.portability.transfer", "audit_export"),
    "audit_import": ("memos.portability.transfer", "audit_import"),
    "export_records": ("memos.portability.transfer", "export_records"),
    "parse_document": ("memos.portability.transfer", "parse_document"),
    "plan_import": ("memos.portability.transfer", "plan_import"),
    "check_passphrase": ("memos.portability.export_file", "check_passphrase"),
    "read_export": ("memos.portability.export_file", "read_export"),
    "write_export": ("memos.portability.export_file", "write_export"),
    # Embeddings
    "build_embedder": ("memos.embeddings", "build_embedder"),
    # The protocols parts share, and small utilities
    "AuditSink": ("memos.ports", "AuditSink"),
    "Background": ("memos.ports", "Background"),
    "PolicySource": ("memos.ports", "PolicySource"),
    "TextCompleter": ("memos.ports", "TextCompleter"),
    "UserDataEraser": ("memos.ports", "UserDataEraser"),
    "MemoryObserver": ("memos.observe", "MemoryObserver"),
    "exception_summary": ("memos.logsafe", "exception_summary"),
    "PollingThread": ("memos.polling", "PollingThread"),
}

__all__ = [
    "DEFAULT_SCHEMA_PATH",
    "MAX_ENTRIES",
    "MAX_TEXT_CHARS",
    "METADATA_MAX_DEPTH",
    "METADATA_MAX_VALUES",
    "NOT_BLANK_PATTERN",
    "TIMESTAMP_END",
    "TIMESTAMP_MIN",
    "USER_ID_MAX_CHARS",
    "USER_ID_PATTERN",
    "YEAR_MAX",
    "YEAR_MIN",
    "YEAR_PATTERN",
    "AccessDenied",
    "ApiKeyStore",
    "ApiShape",
    "AuditLog",
    "AuditSink",
    "Background",
    "ChatContext",
    "ChatMemory",
    "Database",
    "Denied",
    "Entry",
    "ExportFileError",
    "ExportResult",
    "FinishedExchange",
    "GenerationResult",
    "Hit",
    "ImportResult",
    "Inconsistent",
    "Injection",
    "InvalidExport",
    "InvalidInput",
    "Keyring",
    "LocalMemory",
    "LocalMemoryUsage",
    "LocalModels",
    "LoraTraining",
    "MasterKey",
    "MasterKeySource",
    "MasterKeyWatcher",
    "MemScheduler",
    "Memory",
    "MemoryConfig",
    "MemoryItem",
    "MemoryMode",
    "MemoryObserver",
    "MemoryPlan",
    "MemoryReadiness",
    "MemoryReason",
    "MemoryService",
    "MemorySwitch",
    "MemosError",
    "NoChatMemory",
    "NotFound",
    "Operation",
    "OutboxBacklog",
    "Patch",
    "Policy",
    "PolicySource",
    "PolicyStore",
    "PollingThread",
    "Principal",
    "RetrySnapshot",
    "Role",
    "SamplingParams",
    "State",
    "StorageError",
    "StorageFull",
    "StorageUnavailable",
    "TenantEraser",
    "TextCompleter",
    "Unavailable",
    "UnknownLocalModel",
    "UserDataEraser",
    "UserErasedMeanwhile",
    "WriteRetryQueue",
    "apply_import",
    "audit_export",
    "audit_import",
    "authorize",
    "build_embedder",
    "build_local_models",
    "build_memory",
    "build_prompt",
    "build_scheduler",
    "check_passphrase",
    "check_policy_files",
    "connect_master_keys",
    "conversation_of",
    "default_erasers",
    "delete_tenant",
    "effective_user",
    "exception_summary",
    "export_records",
    "hash_key",
    "json_shape_problem",
    "metadata_problem",
    "open_vault",
    "parse_document",
    "parse_key_id",
    "plan_import",
    "policy_schema_text",
    "read_export",
    "rewrap_all",
    "storage_failure",
    "time_problem",
    "user_id_problem",
    "write_export",
    "write_policy_schema",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'memos' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
