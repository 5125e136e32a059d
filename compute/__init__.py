"""compute: what runs on the hardware — content-addressed models, job specs and torch executors.

- errors.py: the exception hierarchy (ComputeError and its typed subclasses).
- canonical.py: canonical msgpack encoding of specs, exact rationals, hex sha256 helpers.
- architectures.py: built-in architectures (mlp, cnn, transformer) built from validated specs.
- models.py: Model = spec + safetensors weights; init_model, load_model, model_hash.
- determinism.py: strict-mode torch settings and canonical tensor hashing.
- datasets.py: (x, y) datasets in safetensors, synthetic generators, inference input blobs.
- jobs.py: InferenceSpec / TrainingSpec (validated, canonical, hashed) and their wire form.
- tolerance.py: strict and tolerant comparison of outputs, calibrated bounds.
- trace.py: checkpoint traces, Merkle roots and proofs (used by disputes).
- train_state.py: the full training state at a checkpoint (weights + optimizer state).
- executor.py: run_inference, run_training, run_training_segment (blocking, on accelerate).
- runner.py: Executor, the trio adapter that runs jobs off the event loop.
- worker.py: pre-started compute worker processes, so a long job runs off the daemon's GIL.
- verify.py: check_batches / check_segment, re-execution checks of a solver's claims.
"""
