"""The HTTP face of memos-proxy: OpenAI wire format, auth, SSE, upstream clients, CLI."""
