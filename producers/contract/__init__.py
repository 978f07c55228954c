"""The domain every component may import, with no I/O.

- `event`: the wire contract (`AuditEvent` v1) and its strict parser;
- `directory`: the console's directory (roles, users, teams, applications, plans), one per infrastructure;
- `permissions`: the whole permission model: the tokens a row carries, the effective level,
  the caller, its `ReadScope` and `scope_for`.
"""
