"""`memos-proxy export` and `memos-proxy import`: move a tenant's memories, with history, as a file.

The export leaves the encrypted store, so it is sealed with a passphrase (scrypt + AES-256-GCM, see
memos.portability.export_file) unless `--plaintext` is given; the passphrase is read from the environment
variable that `--passphrase-env` names, never from the command line (which other users can see).
The memory side lives in memos.portability.transfer; this module parses arguments, opens the stores and
prints counts (never memory text).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.cli import CommandRegistry
    from proxy.settings import Settings


def register(cli: CommandRegistry) -> None:
    export = cli.command("export", "write a tenant's (or one user's) memories with their history to a file")
    export.add_argument("--tenant", required=True)
    export.add_argument("--user", default=None, help="only this user's memories")
    export.add_argument("--out", required=True, type=Path, help="the file to write (mode 0600)")
    sealing = export.add_mutually_exclusive_group(required=True)
    sealing.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="encrypt with the passphrase held in environment variable VAR",
    )
    sealing.add_argument(
        "--plaintext", action="store_true", help="write memory text unencrypted (you protect the file)"
    )
    export.set_defaults(handler=_export)

    imp = cli.command("import", "read an export file into a tenant (re-encrypted, re-embedded, re-indexed)")
    imp.add_argument("--tenant", required=True, help="the tenant to import into (may differ from the source)")
    imp.add_argument("--in", dest="in_file", required=True, type=Path, help="the export file")
    imp.add_argument(
        "--passphrase-env", metavar="VAR", help="the environment variable holding the file's passphrase"
    )
    imp.set_defaults(handler=_import)


def _fail(command: str, message: str, code: int = 1) -> int:
    print(f"memos-proxy {command}: {message}", file=sys.stderr)
    return code


def _bad_tenant(command: str, tenant: str) -> int | None:
    if not tenant.strip() or len(tenant) > 128:
        return _fail(command, "--tenant must be a tenant name of 1 to 128 characters", 2)
    return None


def _passphrase(command: str, var: str | None) -> tuple[str | None, int | None]:
    """The passphrase named by --passphrase-env (None without it), or an exit code."""
    if var is None:
        return None, None
    value = os.environ.get(var)
    if not value:
        return None, _fail(command, f"environment variable {var} (--passphrase-env) is not set or empty", 2)
    return value, None


def _vault(settings: Settings, core: Any, embedder: Any = None) -> Any:
    from memos import open_vault
    from proxy.services import memory_config

    return open_vault(memory_config(settings), core.db, core.keyring, embedder)


def _embedder(settings: Settings) -> Any:
    from memos import build_embedder

    client = None
    if settings.embedding_model.startswith("upstream:"):
        from proxy.services import build_upstreams
        from proxy.upstream.completer import default_target
        from proxy.upstream.embeddings import UpstreamEmbeddings

        key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
        client = UpstreamEmbeddings(build_upstreams(settings), default_target(key))
    return build_embedder(settings.embedding_model, client)


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from memos import (
        ExportFileError,
        ExportResult,
        audit_export,
        check_passphrase,
        export_records,
        write_export,
    )
    from proxy.services import open_core

    code = _bad_tenant("export", args.tenant)
    if code is not None:
        return code
    passphrase, code = _passphrase("export", args.passphrase_env)
    if code is not None:
        return code
    try:
        if passphrase is not None:
            check_passphrase(passphrase)
    except ExportFileError as exc:
        return _fail("export", str(exc), 2)
    if not args.out.parent.is_dir() or args.out.is_dir():
        return _fail("export", f"--out must name a file in an existing directory: {args.out}", 2)
    core = open_core(settings)
    try:
        result = ExportResult()
        records = export_records(_vault(settings, core), args.tenant, args.user, result)
        write_export(args.out, records, passphrase)
        try:
            audit_export(core.audit, args.tenant, args.user, result, encrypted=passphrase is not None)
        except Exception:
            args.out.unlink(missing_ok=True)  # an export the audit trail does not show must not exist
            raise
        sealed = "encrypted" if passphrase is not None else "PLAINTEXT"
        who = f"user {args.user} of tenant {args.tenant}" if args.user else f"tenant {args.tenant}"
        print(f"exported {len(result.ids)} memories ({result.versions} versions) of {who}")
        print(f"written to {args.out} ({sealed}, mode 0600)")
        return 0
    finally:
        core.close()


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from memos import (
        ExportFileError,
        ImportResult,
        InvalidExport,
        apply_import,
        audit_import,
        parse_document,
        plan_import,
        read_export,
    )
    from proxy.services import open_core

    code = _bad_tenant("import", args.tenant)
    if code is not None:
        return code
    passphrase, code = _passphrase("import", args.passphrase_env)
    if code is not None:
        return code
    # Everything is read, decrypted and checked before the store is opened for writing.
    try:
        document = parse_document(read_export(args.in_file, passphrase))
    except (ExportFileError, InvalidExport) as exc:
        return _fail("import", f"{exc}; nothing was imported")
    core = open_core(settings)
    try:
        vault = _vault(settings, core, _embedder(settings))
        plan = plan_import(vault, args.tenant, document)
        result = ImportResult()
        try:
            apply_import(vault, plan, vault.embedder, result)
        except Exception as exc:  # the message names the failure, not memory text
            return _fail(
                "import",
                f"failed after {result.count} memories ({type(exc).__name__}); running the same "
                "import again adds only what is missing",
            )
        finally:
            audit_import(core.audit, args.tenant, result)  # what was written, even if a later one failed
        print(
            f"imported {result.count} memories ({result.versions} versions) into tenant {args.tenant}; "
            f"{result.skipped} already there"
        )
        return 0
    finally:
        core.close()
