"""``make bench``: the service's figures next to the bare framework's, on the embedded stack."""
