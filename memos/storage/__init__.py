"""Storage: the relational database (db), the vault's tables (tables), the encrypted versioned vault
(vault), its vector index (vectors), keyword postings (keyword) and the decoded-row cache (row_cache)."""
