"""Converters from other checkpoint formats to xsam-torch directories."""
