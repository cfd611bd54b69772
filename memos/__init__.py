"""The memory OS: items, vault, reader, scheduler, retrieval, governance, local runtime.

Knows nothing of HTTP. Nothing is built at import time; the composition root wires it.
"""
