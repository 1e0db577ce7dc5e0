"""Workloads: a corpus from a real code base, and sub-agent decode requests over it."""
