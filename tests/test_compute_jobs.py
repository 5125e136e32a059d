"""Job specs (canonical, hashed, validated) and datasets (synthetic and blob)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compute.datasets import (
    BlobDataset,
    Dataset,
    SyntheticClasses,
    SyntheticTokens,
    dataset_ref_from_wire,
    decode_inputs,
    encode_inputs,
    resolve_dataset,
)
from compute.errors import DatasetError, HashMismatch, InputError, JobSpecError
from compute.jobs import InferenceSpec, OptimizerSpec, TrainingSpec, decode_job, job_from_wire
from compute.tolerance import FP32_TOLERANCE, Tolerance
from gossip.envelope import packb

H1, H2 = "a" * 64, "b" * 64


def _training(**overrides: Any) -> TrainingSpec:
    fields: dict[str, Any] = dict(
        model_hash=H1,
        dataset=SyntheticClasses(1, 64, (8,), 3),
        optimizer=OptimizerSpec.sgd("0.1", "0.9"),
        steps=10,
        batch_size=8,
        seed=3,
        checkpoint_every=4,
    )
    return TrainingSpec(**{**fields, **overrides})


def test_specs_round_trip_through_canonical_bytes() -> None:
    specs = [
        _training(),
        _training(optimizer=OptimizerSpec.adam("1e-3"), loss="mse", mode="tolerant"),
        _training(dataset=BlobDataset(H2), mode="tolerant", precision="bf16"),
        InferenceSpec(H1, H2, 4),
        InferenceSpec(H1, H2, 4, mode="tolerant", tolerance=Tolerance("1e-3", "1/100")),
    ]
    for spec in specs:
        data = spec.encode()
        assert decode_job(data) == spec
        assert decode_job(data).hash == spec.hash
    assert len({s.hash for s in specs}) == len(specs)


def test_equal_values_give_one_canonical_spec() -> None:
    a = _training(optimizer=OptimizerSpec.sgd("0.1", "0.9"))
    b = _training(optimizer=OptimizerSpec.sgd("1/10", Fraction(9, 10)))
    c = job_from_wire(dict(reversed(list(a.to_wire().items()))))
    assert a.encode() == b.encode() == c.encode()
    assert a.to_wire()["optimizer"] == {"lr": "1/10", "momentum": "9/10", "name": "sgd", "weight_decay": "0"}
    assert InferenceSpec(H1, H2, 4, mode="tolerant").tolerance == FP32_TOLERANCE  # default made explicit
    assert _training(optimizer=OptimizerSpec.sgd("0.2")).hash != a.hash
    assert _training(seed=4).hash != a.hash


def test_decode_rejects_non_canonical_and_malformed_bytes() -> None:
    wire = InferenceSpec(H1, H2, 4).to_wire()
    reordered = packb(dict(reversed(list(wire.items()))))
    with pytest.raises(JobSpecError, match="not in canonical form"):
        decode_job(reordered)
    for garbage in [b"", b"\xc1", b"\x92\x01", packb([1, 2]), packb({"kind": "mining"}), b"x" * 70_000]:
        with pytest.raises(JobSpecError):
            decode_job(garbage)


@pytest.mark.parametrize(
    ("change", "problems"),
    [
        ({"steps": 0, "seed": -1}, ["'steps' must be an int", "'seed' must be an int"]),
        ({"checkpoint_every": 11}, ["'checkpoint_every' must be an int in [1, 10]"]),
        ({"loss": "hinge", "batch_size": True}, ["'loss' must be one of", "'batch_size' must be an int"]),
        ({"model_hash": "A" * 64}, ["'model_hash' must be 64 lowercase hex"]),
        ({"mode": "strict", "precision": "bf16"}, ["strict mode requires precision 'fp32'"]),
        ({"mode": "fuzzy"}, ["'mode' must be one of"]),
        ({"tolerance": {"atol": "1", "rtol": "1"}}, ["strict mode takes no tolerance"]),
        (
            {"optimizer": {"name": "adam", "lr": "0.1", "momentum": "0.9"}},
            ["unknown adam optimizer field 'momentum'"],
        ),
        ({"optimizer": {"name": "rmsprop", "lr": "0.1"}}, ["optimizer must be a map naming one of"]),
        ({"optimizer": {"name": "sgd", "lr": "fast"}}, ["expected a rational"]),
        ({"optimizer": {"name": "sgd", "lr": "100"}}, ["'lr' must be in [0, 10]"]),
        ({"optimizer": {"name": "sgd"}}, ["sgd optimizer needs 'lr'"]),
        ({"dataset": {"kind": "classes", "seed": 1}}, ["dataset: classes dataset fields must be"]),
        ({"dataset": {"kind": "blob", "hash": "xyz"}}, ["dataset: blob dataset hash must be 64"]),
        ({"dataset": {"kind": ["blob"]}}, ["unknown dataset kind"]),
        ({"v": 2}, ["unsupported job spec version"]),
        ({"extra": 1}, ["unknown field 'extra'"]),
    ],
)
def test_bad_training_specs_give_clear_errors(change: dict[str, Any], problems: list[str]) -> None:
    wire = {**_training().to_wire(), **change}
    with pytest.raises(JobSpecError) as info:
        job_from_wire(wire)
    assert all(p in str(info.value) for p in problems), str(info.value)


def test_bad_tolerances_and_inference_specs() -> None:
    with pytest.raises(JobSpecError, match="tolerance atol must be in"):
        Tolerance("2", "0")
    with pytest.raises(JobSpecError, match="expected a rational"):
        Tolerance("nan", "0")
    with pytest.raises(JobSpecError) as info:
        InferenceSpec("nope", "", 0)
    assert len(info.value.problems) == 3


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)
_field_values = st.sampled_from(sorted(_training().to_wire())).flatmap(lambda k: st.tuples(st.just(k), _json))


@settings(max_examples=200, deadline=None)
@given(st.lists(_field_values, max_size=4), st.booleans())
def test_arbitrary_wire_values_give_a_spec_or_a_job_spec_error(
    changes: list[tuple[str, Any]], inference: bool
) -> None:
    base = InferenceSpec(H1, H2, 4).to_wire() if inference else _training().to_wire()
    try:
        spec = job_from_wire({**base, **dict(changes)})
    except JobSpecError:
        return
    assert decode_job(spec.encode()) == spec


def test_synthetic_datasets_are_reproducible_and_well_formed() -> None:
    ref = SyntheticClasses(seed=9, size=200, shape=(1, 6, 6), classes=4)
    a, b = ref.generate(), ref.generate()
    assert a.hash == b.hash and torch.equal(a.x, b.x)
    assert SyntheticClasses(seed=10, size=200, shape=(1, 6, 6), classes=4).generate().hash != a.hash
    assert a.x.shape == (200, 1, 6, 6) and a.x.dtype == torch.float32 and a.y.dtype == torch.int64
    assert set(a.y.tolist()) == {0, 1, 2, 3}
    # separable: with noise 1/2 < 1, the sign pattern of an item is its class prototype
    signs = a.x.reshape(200, -1).sign()
    assert all(torch.equal(signs[i], signs[(a.y == a.y[i]).nonzero()[0, 0]]) for i in range(200))

    tokens = SyntheticTokens(seed=2, size=50, seq_len=12, vocab=30).generate()
    assert tokens.x.shape == tokens.y.shape == (50, 12)
    assert torch.equal(tokens.x[:, 1:], tokens.y[:, :-1])  # y is x shifted by one
    assert int(tokens.x.max()) < 30 and int(tokens.x.min()) >= 0
    assert dataset_ref_from_wire(ref.to_wire()) == ref


def test_dataset_blobs_are_checked() -> None:
    data = SyntheticTokens(seed=2, size=10, seq_len=4, vocab=8).generate()
    blob = data.to_bytes()
    assert resolve_dataset(BlobDataset(data.hash), blob).hash == data.hash
    with pytest.raises(HashMismatch):
        resolve_dataset(BlobDataset("0" * 64), blob)
    with pytest.raises(DatasetError, match="must be supplied"):
        resolve_dataset(BlobDataset(data.hash))
    with pytest.raises(DatasetError, match="not valid safetensors"):
        Dataset.from_bytes(b"garbage!")
    with pytest.raises(DatasetError, match="exactly tensors 'x' and 'y'"):
        Dataset.from_bytes(encode_inputs(data.x))
    with pytest.raises(DatasetError, match="same number"):
        Dataset(data.x, data.y[:5])
    with pytest.raises(DatasetError, match="must be float32 or int64"):
        Dataset(data.x.to(torch.int16), data.y)
    with pytest.raises(DatasetError, match="exceeds"):
        SyntheticClasses(seed=1, size=10_000_000, shape=(64,), classes=2)
    with pytest.raises(InputError, match="exactly one tensor 'x'"):
        decode_inputs(blob)
