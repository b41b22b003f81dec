"""Staged probes of a profile (test connect / test send) and the knowledge base of known failures."""
