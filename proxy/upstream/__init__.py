"""Upstream clients behind one small interface (see proxy.upstream.base)."""
