"""What Dask workers run over an image's pixels: blocks (chunk arithmetic, downsampling), shards (writing and
proving Zarr arrays), codecs (the lossless codecs and their trial) and passes (the functions a worker runs over
regions: the streaming pass, the small levels, the codec trial, QC's per-chunk facts) and sources (reading a
region of a submitted file in the image's axes, as its format's layout says).

Importing this package loads neither Prefect nor bioio (``tests/test_architecture.py`` checks it): workers
import it as they start (``cluster.WORKER_MODULES``), so the cluster starts quickly and a worker never
touches the orchestration's state. A bioio reader is imported only inside a task that needs one.
"""

from zarrchive.pixels import blocks, codecs, passes, shards, sources

__all__ = ["blocks", "codecs", "passes", "shards", "sources"]
