"""The archive: where versions live and what is kept with them.

``storage`` (one URL syntax for folders and object stores; writes proven, publication atomic), ``staging``
(the run's scratch and the persistent work area), ``identity`` (what names pixel work and keys Prefect's
cache), ``versions`` (where an accession's versions are, which are public) and ``documents`` (the typed,
versioned ``manifest.json``, ``versions.json`` and QC report), ``lease`` (one publisher per accession),
``sharing`` (what a new version shares with the one before), ``lineage`` (what each stage did, as an RO-Crate)
and ``provenance`` (reading it back), the pages people read (``landing``: a version's page and its QC page;
``front``: the archive's index; ``thumbnails``), ``fixity`` (is a version still what its manifest says) and
``changes`` (the feed of what became public).

Nothing here imports a stage or a flow (``tests/test_architecture.py``).
"""
