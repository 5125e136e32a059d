"""Content-addressed blobs (model weights, datasets, results): the public entry point.

Import from here. The pieces: gossip.blobstore keeps blobs on disk (chunked manifests,
atomic puts, resumable partial downloads); gossip.blobwire is the "/hivemesh/blob/1"
stream format; gossip.blobserver answers it; gossip.blobfetch downloads a blob's chunks
from several peers at once, gossip.blobplan deciding who sends which; gossip.blobexchange
is the entry point that fetches (manifest, size limit, download) and wires the server to a
transport.
"""

from gossip.blobexchange import DEFAULT_MAX_BLOB_SIZE, PROTOCOL, BlobExchange
from gossip.blobfetch import BlobTooLarge, FetchFailed
from gossip.blobserver import BlobStats
from gossip.blobstore import CHUNK_SIZE, BlobError, BlobNotFound, BlobStore, DiskFull, Manifest, PartialBlob

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_MAX_BLOB_SIZE",
    "PROTOCOL",
    "BlobError",
    "BlobExchange",
    "BlobNotFound",
    "BlobStats",
    "BlobStore",
    "BlobTooLarge",
    "DiskFull",
    "FetchFailed",
    "Manifest",
    "PartialBlob",
]
