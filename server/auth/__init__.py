"""Authentication: bearer-token verification, the scope table, the caller's identity."""
