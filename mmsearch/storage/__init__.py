"""Storage of an index: the LanceDB items table, its snapshot, files and object store.

- :mod:`.schema`: the table's Arrow schema and rows built in it.
- :mod:`.table`: :class:`~mmsearch.storage.table.ItemStore`, the table of one index.
- :mod:`.locks`: the writer lock and write errors.
- :mod:`.snapshot`: ``snapshot.json``, which ties a table version to its ANN files.
- :mod:`.versions`: the table's newest committed version, from file names only.
- :mod:`.rowsfile`: the display columns of a snapshot, memory-mapped by queries.
- :mod:`.objectstore`: indexes under ``s3://bucket/prefix``.
- :mod:`.s3`: bounded store calls (timeouts, retries) and store errors as one line.
- :mod:`.lease`: the writer lease that lets one writer at a time change an object-store index.
- :mod:`.fence`: the lease's check before every table write.
- :mod:`.metadata_keys`: the metadata keys every row shares (``file``, ``id``).

Importing this package loads nothing heavy: import the module you need.
"""
