"""The read path: candidates from the vault (retrieval), ordered by a pure function (ranking) with the
periods a query names (temporal), and rendered as the block the model sees (injection)."""
