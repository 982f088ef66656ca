"""Transparent DNS proxy, DNS name matching and the FQDN cache."""
