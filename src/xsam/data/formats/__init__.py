"""Annotation-format readers: each turns one public dataset's files into records
(:class:`xsam.tasks.records.Record`)."""
