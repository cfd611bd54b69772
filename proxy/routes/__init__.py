"""HTTP routes, one module per concept; each exposes `routes() -> list[BaseRoute]`."""
