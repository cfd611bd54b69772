"""The write path: exchanges committed durably (outbox, write_retry while storage fails), drained by the
worker through the reader (facts from an exchange) and the operator (what each fact does to the vault)."""
