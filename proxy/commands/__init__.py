"""CLI subcommands of `memos-proxy`, one module per command group (see proxy.cli)."""
