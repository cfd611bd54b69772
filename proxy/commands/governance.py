"""Governance commands: `audit verify|list`, `keys rotate-master`, `tenants delete|labels`,
`policy schema|check`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memos import TenantEraser
    from proxy.cli import CommandRegistry
    from proxy.services import Core
    from proxy.settings import Settings


def register(cli: CommandRegistry) -> None:
    audit = cli.group("audit", "inspect and verify tenants' audit trails")
    verify = audit.add_parser(
        "verify",
        help="check a tenant's hash chain; exit 1 naming the first bad entry",
        description="Walk the tenant's audit chain. Exit 0 when intact; 1 naming the first entry "
        "that is missing, altered, reordered or inserted.",
    )
    target = verify.add_mutually_exclusive_group(required=True)
    target.add_argument("--tenant", help="the tenant whose trail to verify")
    target.add_argument("--all", action="store_true", help="every tenant that has a trail")
    verify.set_defaults(handler=_audit_verify)

    listing = audit.add_parser("list", help="print a tenant's audit entries as JSON lines")
    listing.add_argument("--tenant", required=True)
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--cursor", default=None)
    listing.set_defaults(handler=_audit_list)

    keys = cli.group("keys", "manage tenant API keys")
    rotate = keys.add_parser(
        "rotate-master",
        help="make a new master key and re-wrap every data key under it (safe while serving)",
        description="With the key file ($MEMOS_DATA_DIR/master.key): writes a new active key ahead of "
        "the old ones, re-wraps every tenant's data key, and running proxies adopt it within about a "
        "second. With MEMOS_MASTER_KEY=NEW,OLD: re-wraps every data key under NEW (the first key).",
    )
    rotate.add_argument(
        "--settle-s",
        type=float,
        default=2.0,
        help="wait this long before the second re-wrap pass (lets running proxies notice the new key)",
    )
    rotate.set_defaults(handler=_rotate_master)

    tenants = cli.group("tenants", "manage tenants")
    delete = tenants.add_parser(
        "delete",
        help="delete a tenant: revoke its keys, erase its data and destroy its data key",
        description="Crypto-shreds the tenant: its data key is destroyed, so every ciphertext it "
        "left anywhere (database, vectors, caches, backups) can no longer be decrypted. Its audit "
        "trail is kept (it holds no text) and records the deletion.",
    )
    delete.add_argument("--tenant", required=True)
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=_tenants_delete)
    labels = tenants.add_parser(
        "labels",
        help="print each tenant's metric label (MEMOS_METRICS_TENANT_LABEL=hash) beside its name",
        description="The opaque `t_...` label a tenant has in /metrics is an HMAC of its name keyed "
        "from the master key: the same in every replica. Prints `name<TAB>label` for the tenants "
        "named, or for every tenant that has keys or an audit trail.",
    )
    labels.add_argument("--tenant", action="append", default=None, help="a tenant (repeatable)")
    labels.set_defaults(handler=_tenants_labels)

    policy = cli.group("policy", "tenant policy files")
    schema = policy.add_parser("schema", help="write (or print with -o -) the policy JSON Schema")
    schema.add_argument("--output", "-o", type=Path, default=None)
    schema.set_defaults(handler=_policy)
    check = policy.add_parser("check", help="validate policy files; exit 1 naming file:line: field")
    check.add_argument("files", nargs="+", type=Path)
    check.set_defaults(handler=_policy)


# ---------------------------------------------------------------- audit


def _audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.services import open_core

    core = open_core(settings)
    try:
        tenants = core.audit.tenants() if args.all else [args.tenant]
        failed = 0
        for tenant in tenants:
            result = core.audit.verify(tenant)
            if result.ok:
                print(f"{tenant}: intact, {result.entries} entries (head {result.head_mac or '-'})")
            else:
                failed += 1
                where = f"entry {result.first_bad}" if result.first_bad is not None else "chain head"
                print(f"{tenant}: BROKEN at {where}: {result.reason}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        core.close()


def _audit_list(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.services import open_core

    core = open_core(settings)
    try:
        entries, cursor = core.audit.list(args.tenant, args.limit, args.cursor)
        for entry in entries:
            print(json.dumps(entry.to_dict(), sort_keys=True))
        if cursor:
            print(f"# next cursor: {cursor}", file=sys.stderr)
        return 0
    finally:
        core.close()


# ---------------------------------------------------------------- master key rotation


def _rotate_master(args: argparse.Namespace, settings: Settings) -> int:
    from memos import MasterKey, MasterKeySource, rewrap_all
    from proxy.services import open_core

    core = open_core(settings)
    try:
        source = getattr(core, "master_keys", None)
        if source is None:
            env = settings.master_key.get_secret_value() if settings.master_key else None
            source = MasterKeySource.from_settings(env, settings.data_dir)
        before = source.current()
        if source.is_file:
            new = MasterKey.generate()
            source.replace(before.rotated(new))  # first: running proxies learn it from the file
            print(f"new master key {new.key_id} written to {source.path} (previous: {before.active.key_id})")
        keys = source.current()
        report = rewrap_all(core.db, keys)
        if source.is_file and args.settle_s > 0:
            time.sleep(args.settle_s)  # a proxy may have wrapped a new tenant's key just before noticing
            second = rewrap_all(core.db, keys)
            report.rewrapped.extend(second.rewrapped)
            report.unknown = second.unknown
        core.audit.use_mac_key(keys.active.derive("audit-chain"))
        for tenant in sorted(set(report.rewrapped)):
            core.audit.record(
                tenant,
                "master.rotate",
                detail={"master_key_id": keys.active.key_id, "previous_key_id": before.active.key_id},
            )
        print(
            f"{len(set(report.rewrapped))} data key(s) re-wrapped under master key {keys.active.key_id}; "
            f"{report.already} already were"
        )
        if report.unknown:
            print(
                "data keys wrapped by a master key this process does not have: " + ", ".join(report.unknown),
                file=sys.stderr,
            )
            return 1
        if not source.is_file:
            print(
                "MEMOS_MASTER_KEY: now roll every proxy to MEMOS_MASTER_KEY=NEW,OLD "
                "(keep OLD listed so old audit entries and backups stay verifiable)"
            )
        return 0
    finally:
        core.close()


# ---------------------------------------------------------------- tenant deletion


def _tenants_delete(args: argparse.Namespace, settings: Settings) -> int:
    from memos import delete_tenant
    from proxy.services import open_core

    if not args.yes:
        if not sys.stdin.isatty():
            print("refusing to delete without --yes", file=sys.stderr)
            return 2
        answer = input(f"Delete tenant {args.tenant!r} and destroy its data key for good? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            return 1
    core = open_core(settings)
    try:
        report = delete_tenant(core, args.tenant, erasers=_erasers(settings, core))
        print(
            f"tenant {args.tenant} deleted: {report.keys_revoked} API key(s) revoked, "
            f"data key destroyed, {report.stores_erased} store(s) erased"
        )
        return 0
    finally:
        core.close()


def _tenants_labels(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.metrics import TenantLabels
    from proxy.services import open_core, tenant_label_key

    core = open_core(settings)
    try:
        labels = TenantLabels("hash")
        labels.use_key(tenant_label_key(core))
        known = sorted({k.tenant for k in core.api_keys.list()} | set(core.audit.tenants()))
        for tenant in args.tenant or known:
            print(f"{tenant}\t{labels(tenant)}")
        return 0
    finally:
        core.close()


def _erasers(settings: Settings, core: Core) -> list[TenantEraser]:
    from memos import default_erasers

    return default_erasers(core.db, settings.resolved_vector_uri, settings.data_dir)


# ---------------------------------------------------------------- policy files


def _policy(args: argparse.Namespace, settings: Settings) -> int:
    from memos import DEFAULT_SCHEMA_PATH, check_policy_files, policy_schema_text, write_policy_schema

    command = getattr(args, "policy_command", None) or args.command
    if command == "schema":
        if args.output is not None and str(args.output) == "-":
            sys.stdout.write(policy_schema_text())
        else:
            print(write_policy_schema(args.output or DEFAULT_SCHEMA_PATH))
        return 0
    errors = check_policy_files(args.files)
    for message in errors:
        print(message, file=sys.stderr)
    if not errors:
        print(f"{len(args.files)} policy file(s) valid")
    return 1 if errors else 0
