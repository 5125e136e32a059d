"""Content-addressed blobs (model weights, datasets, results): the public entry point.

Import from here. The pieces: gossip.blobstore keeps blobs on disk (chunked manifests,
atomic puts, resumable partial downloads); gossip.blobwire is the "/hivemesh/blob/1"
stream format; gossip.blobserver answers it; gossip.blobexchange fetches from peers and
wires the server to a transport.
"""

from gossip.blobexchange import PROTOCOL, BlobExchange, FetchFailed
from gossip.blobserver import BlobStats
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
