"""`memos-proxy keys create | list | revoke`: tenant API keys (stored hashed; shown once)."""

from __future__ import annotations

import argparse
import sys

from proxy.cli import CommandRegistry
from proxy.settings import Settings


def register(cli: CommandRegistry) -> None:
    keys = cli.group("keys", "manage tenant API keys")

    create = keys.add_parser("create", help="make a key; the raw key is printed as the last line")
    create.add_argument("--tenant", required=True)
    create.add_argument("--role", required=True, help="admin | app | user | readonly")
    create.add_argument("--user", default=None, help="bind the key to this user of the tenant")
    create.set_defaults(handler=create_key)

    listing = keys.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant", default=None)
    listing.set_defaults(handler=list_keys)

    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=revoke_key)


def create_key(args: argparse.Namespace, settings: Settings) -> int:
    from memos import Role
    from proxy.services import open_core

    try:
        role = Role(args.role)
    except ValueError:
        print(f"unknown role {args.role!r}; one of: {', '.join(r.value for r in Role)}", file=sys.stderr)
        return 2
    core = open_core(settings)
    try:
        key_id, raw_key = core.api_keys.create(args.tenant, role, bound_user=args.user)
        core.audit.record(args.tenant, "key.create", key_id=key_id, detail={"role": role.value})
    finally:
        core.close()
    bound = f", bound to user {args.user}" if args.user else ""
    print(f"created key {key_id} for tenant {args.tenant} (role {role.value}{bound}); it is shown only once:")
    print(raw_key)
    return 0


def list_keys(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.services import open_core

    core = open_core(settings)
    try:
        rows = core.api_keys.list(args.tenant)
    finally:
        core.close()
    print(f"{'KEY_ID':<14} {'TENANT':<20} {'ROLE':<9} {'USER':<16} {'CREATED':<20} STATUS")
    for row in rows:
        status = "active" if row.active else f"revoked {row.revoked_at:%Y-%m-%d %H:%M:%S}"
        print(
            f"{row.key_id:<14} {row.tenant:<20} {row.role:<9} {row.bound_user or '-':<16} "
            f"{row.created_at:%Y-%m-%d %H:%M:%S}  {status}"
        )
    return 0


def revoke_key(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.services import open_core

    core = open_core(settings)
    try:
        info = core.api_keys.get(args.key_id)
        if info is None:
            print(f"no key {args.key_id}", file=sys.stderr)
            return 1
        if not core.api_keys.revoke(args.key_id):
            print(f"key {args.key_id} was already revoked", file=sys.stderr)
            return 1
        core.audit.record(info.tenant, "key.revoke", key_id=args.key_id)
    finally:
        core.close()
    print(f"revoked key {args.key_id} (tenant {info.tenant})")
    return 0
