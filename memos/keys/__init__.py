"""Keys: envelope-encryption primitives (crypto) and the per-tenant data keys wrapped by the master key
(keyring)."""
