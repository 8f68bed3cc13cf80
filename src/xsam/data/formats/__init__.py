"""Annotation-format readers: each turns one public dataset's files into :class:`xsam.data.records.Record`."""
