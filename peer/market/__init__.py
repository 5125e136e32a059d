"""The compute market agents of a peer: announce jobs, bid, solve, deliver and check results.

A job's life as the market runs it (see DESIGN.md, "a job's life"):
submitter posts job_post and gossips the announcement -> solvers bid (job_bid) -> the ledger
assigns -> the submitter seals the input to the winner's X25519 key -> the winner runs it,
commits (job_commit) and serves the result blob -> the submitter checks the result -> the
ledger finalizes after the challenge window. Without a bid window the submitter asks solvers
for signed quotes first and posts job_award, assigned in its own block; a submitter that
spot-checks the result itself may accept it (job_accept), which finalizes it at once.

- errors.py: MarketError and its typed subclasses (each with an HTTP status and a code).
- sealed.py: the input envelope (X25519 ECDH + HKDF + ChaCha20Poly1305) and key derivation.
- wire.py: the gossip messages on the tasks topic, their schemas and the topic validator.
- book.py: what this peer heard on the tasks topic (jobs, inputs, results, progress, models).
- chain.py: the market's view of the ledger (signed txs, job queries, a height watch).
- bundles.py: blob formats of models and results, and the result check.
- models.py: the index of models this peer serves, registration, the model of a new job.
- specs.py: job specs built from API requests (validated against the model).
- solver.py: the solver agent (bid, run, commit, serve, announce).
- solving.py: what the solver runs in its compute worker process (compute/worker.py).
- submitter.py: the submitter agent (post, announce, seal the input, fetch and check results).
- journal.py: the agents' durable per-job records (atomic JSON files), reloaded on restart.
- behaviours.py: TEST behaviours of solvers and verifiers that cheat on purpose (honest by default).
- checkpoints.py: the solver's checkpoint states, served over `/hivemesh/market/checkpoint/1`.
- writeback.py: checkpoint states written by a thread of their own while training goes on.
- inputs.py: a job's private input, served by its submitter to verifiers and referees.
- quotes.py: signed solver quotes over `/hivemesh/market/quote/1`, for jobs awarded at post.
- defender.py: the solver's side of a dispute (reveal and bisect with Merkle proofs).
- verifier.py: the verifier agent (spot-check sampled items, verify_report, dispute a bad result).
- challenger.py: the challenger's side of a dispute, and the re-execution every checker shares.
- referee.py: a committee validator re-executes the disputed unit and posts its verdict.
- canaries.py: the submitter seals a canary on every job and reveals the real ones.
- voter.py: reputation votes: open them on first-hand evidence, commit and reveal scores.
- service.py: MarketService, which owns the blob store, the executor and both agents.
- host.py: the daemon's handle on the market: loads it off the event loop, feeds it gossip.
- api.py: the market endpoints of the local HTTP API.
- render.py: how the CLI shows jobs (live progress) and models; `follow_jobs` polls the API.
- demo.py: `hivemesh demo`, the market end to end on a local cluster.
- demo_cheat.py: `hivemesh demo --cheat`: a cheating solver caught, disputed and slashed.
"""
