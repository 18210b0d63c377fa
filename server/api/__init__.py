"""Servicers: proto in -> service call -> proto out, nothing else."""
