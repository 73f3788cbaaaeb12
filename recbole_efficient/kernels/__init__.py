"""Numeric kernels (scans, recurrences) used by the efficient sequential models."""
