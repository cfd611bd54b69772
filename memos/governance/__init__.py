"""Governance: who may do what (principals, roles, ACL), per-tenant policy, audit, redaction."""
