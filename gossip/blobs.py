"""Content-addressed blobs (model weights, datasets, results): the public entry point.

gossip.blobstore keeps blobs on disk (chunked manifests, atomic puts, resumable partials);
gossip.blobexchange moves them between peers over "/hivemesh/blob/1" streams. Import from
here.
"""

from gossip.blobexchange import PROTOCOL, BlobExchange, BlobStats, FetchFailed
from gossip.blobstore import CHUNK_SIZE, BlobError, BlobNotFound, BlobStore, Manifest, PartialBlob

__all__ = [
    "CHUNK_SIZE",
    "PROTOCOL",
    "BlobError",
    "BlobExchange",
    "BlobNotFound",
    "BlobStats",
    "BlobStore",
    "FetchFailed",
    "Manifest",
    "PartialBlob",
]
