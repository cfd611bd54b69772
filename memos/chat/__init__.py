"""Memory around one chat call: the contract with the proxy (contract), the plan of what memory does
on a request (planner), and the service that prepares the upstream body and records the exchange (memory)."""
