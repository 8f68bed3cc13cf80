"""Converters from other checkpoint formats to xsam-torch directories (the official release:
:mod:`.official`)."""
