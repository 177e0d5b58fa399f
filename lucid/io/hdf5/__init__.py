"""HDF5 volumes via h5py: ``HDF5Source`` (read-only, slab reads) and ``HDF5Sink``.

``files`` opens files and finds datasets, labels and linked files; ``source``
reads; ``sink`` writes.

Reading
    Files are opened with mode "r" (many processes may read at once).  The slab
    axis is the outermost pooled axis unless the dataset's chunks are thinner
    (relative to the axis length) along another pooled axis: a slab one chunk
    thick then decompresses each chunk once.  ``chunk_rows`` is the chunk extent
    along that axis so the planner can align slabs to chunk boundaries.

Chunk cache
    ``set_cache(nbytes)`` re-opens the dataset through the low-level API with a
    dataset-access property list whose chunk cache (``rdcc_nbytes``) holds
    ``nbytes`` (one input slab, which the planner counts) plus one chunk,
    with ``rdcc_nslots`` a prime ~100x the number of chunks that fit and
    w0 = 1 (fully read chunks are evicted first).  One slab, so a chunk
    shared by two reads (halo rows, or carried indices read one at a time) is
    decompressed once.  Only filtered chunks are cached: unfiltered ones are
    read in place.  The file stays open.

Writing
    ``HDF5Sink`` writes one chunked dataset into a temporary file (see
    ``lucid.io.atomic``); chunks are one slab-divisor thick along the slab
    axis, compressed as ``lucid.io.compression`` parses ``compression``
    (default gzip level 1 + shuffle).  Source attributes and dimension labels are
    copied; ``element_size_um`` is multiplied by the stride and an ``affine``
    attribute (4x4, mm) is updated to the output grid; provenance attributes
    are prefixed ``lucid_``.
"""

from lucid.io.hdf5.files import (
    KNOWN_FILTERS,
    SKIP_ATTRS,
    dimension_labels,
    files_read,
    list_datasets,
    open_h5_file,
    select_dataset,
)
from lucid.io.hdf5.sink import (
    COPY_SKIP,
    GuardedFile,
    HDF5Sink,
    check_hdf5_output,
    choose_chunks,
    dataset_for,
    hdf5_output_target,
    parse_compression,
    provenance_attrs,
)
from lucid.io.hdf5.source import HDF5Source

__all__ = [
    "COPY_SKIP", "KNOWN_FILTERS", "SKIP_ATTRS", "GuardedFile", "HDF5Sink", "HDF5Source", "check_hdf5_output",
    "choose_chunks", "dataset_for", "dimension_labels", "files_read", "hdf5_output_target", "list_datasets",
    "open_h5_file", "parse_compression", "provenance_attrs", "select_dataset",
]
