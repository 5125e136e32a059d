"""gossip: everything that crosses the network.

- transport.py: the Transport interface (gossip, streams, dialing) every layer above is written against.
- libp2p_transport.py: Transport over py-libp2p (TCP, Noise, Yamux, GossipSub); libp2p_host.py builds the
  hardened host/router/pubsub, libp2p_stream.py adapts streams and maps library errors to ours.
- memory_transport.py: the second real Transport: many peers in one process, with drop / delay /
  duplicate / partition controls, for tests and large simulations.
- identity.py: Ed25519 identities, peer ids, key files (0600).
- envelope.py: signed, versioned msgpack envelopes (the unit of every gossip message).
- framing.py: length-prefixed frames with size limits and deadlines.
- reqresp.py: request/response over streams (msgpack bodies).
- node.py: GossipNode, one per peer: validation (accept / ignore / reject), delivery, scoring hooks;
  seen.py holds what it has accepted recently, antientropy.py recovers messages gossip lost.
- scoring.py: peer scores and bans. topics.py: topic names. errors.py: the exception hierarchy.
- dialer.py: keeps bootstrap peers connected; peerexchange.py grows the mesh beyond them.
- blobs.py: content-addressed blobs (blobstore.py on disk, blobexchange.py fetching, blobserver.py
  serving, blobwire.py the frame format): chunked, sha256-checked, resumable.
"""
