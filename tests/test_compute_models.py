"""Architectures, content-addressed models, strict settings and tensor hashing."""

from __future__ import annotations

import struct
import threading

import pytest
import torch
from safetensors.torch import save as st_save

from compute.architectures import build_module, check_inputs, parameter_count, validate_spec
from compute.determinism import STRICT_THREADS, strict_settings, tensor_list_hash, tensors_hash
from compute.errors import ArchitectureError, DeterminismError, HashMismatch, InputError, WeightsError
from compute.models import Model, decode_weights, encode_weights, init_model, load_model, model_hash

MLP = {"arch": "mlp", "in": 16, "hidden": [32, 32], "out": 4}
CNN = {"arch": "cnn", "in_shape": [3, 16, 16], "channels": [4, 8], "out": 5}
LM = {"arch": "transformer", "vocab": 20, "context": 8, "d_model": 16, "heads": 2, "layers": 2}


def _sample(spec: dict, batch: int = 3) -> torch.Tensor:
    if spec["arch"] == "transformer":
        return torch.randint(0, spec["vocab"], (batch, spec["context"]))
    shape = [spec["in"]] if spec["arch"] == "mlp" else spec["in_shape"]
    return torch.randn(batch, *shape)


@pytest.mark.parametrize(
    ("spec", "out_shape"),
    [(MLP, (3, 4)), (CNN, (3, 5)), (LM, (3, 8, 20)), ({**CNN, "in_shape": [1, 28, 28], "kernel": 5}, (3, 5))],
)
def test_each_architecture_builds_and_runs_forward(spec: dict, out_shape: tuple[int, ...]) -> None:
    model = Model.init(spec, seed=0)
    module = model.module()
    out = module(_sample(spec))
    assert tuple(out.shape) == out_shape
    assert bool(torch.isfinite(out).all())
    assert sum(p.numel() for p in module.parameters()) == parameter_count(spec)


def test_transformer_is_causal_and_ties_its_head() -> None:
    module = Model.init(LM, seed=1).module()
    tokens = _sample(LM, batch=1)
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % LM["vocab"]
    with torch.no_grad():
        a, b = module(tokens), module(changed)
    assert torch.equal(a[:, :-1], b[:, :-1])  # earlier positions never see later tokens
    assert not torch.equal(a[:, -1], b[:, -1])
    assert not any("head" in name for name in module.state_dict())
    assert module(tokens[:, :3]).shape == (1, 3, LM["vocab"])  # shorter than the context is fine


def test_init_model_is_deterministic_per_seed_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert init_model(MLP, 7) == init_model(MLP, 7)
    assert init_model(MLP, 7) != init_model(MLP, 8)
    assert torch.equal(torch.get_rng_state(), before)


def _bump_one_ulp(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    changed = {k: v.clone() for k, v in tensors.items()}
    flat = changed[name].view(-1)
    flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf")))
    return changed


def test_model_hash_changes_when_the_spec_or_any_weight_changes() -> None:
    weights = init_model(MLP, 0)
    tensors = decode_weights(weights)
    base = model_hash(MLP, weights)
    assert model_hash(dict(reversed(list(MLP.items()))), weights) == base  # key order is irrelevant
    assert model_hash({**MLP, "activation": "relu"}, weights) == base  # defaults are normalized in
    assert model_hash({**MLP, "activation": "gelu"}, weights) != base  # same shapes, other function
    for name in tensors:
        assert model_hash(MLP, _bump_one_ulp(tensors, name)) != base, name


def test_model_hash_depends_on_tensor_content_not_on_the_file_layout() -> None:
    tensors = decode_weights(init_model(MLP, 0))
    other_writer = st_save({k: v for k, v in reversed(list(tensors.items()))}, metadata={"note": "x"})
    assert other_writer != encode_weights(tensors)
    assert model_hash(MLP, other_writer) == model_hash(MLP, tensors)
    assert Model.create(MLP, other_writer).hash == model_hash(MLP, tensors)


def test_load_model_rejects_weights_that_do_not_match_the_architecture() -> None:
    good = decode_weights(init_model(MLP, 0))
    cases = {
        "another architecture": init_model(CNN, 0),
        "a missing tensor": encode_weights({k: v for k, v in good.items() if k != "2.bias"}),
        "an extra tensor": encode_weights({**good, "extra": torch.zeros(1)}),
        "a wrong shape": encode_weights({**good, "0.weight": torch.zeros(32, 15)}),
        "a wrong dtype": encode_weights({**good, "0.weight": good["0.weight"].double()}),
    }
    for case, weights in cases.items():
        with pytest.raises(WeightsError) as info:
            load_model(MLP, weights)
        assert info.value.problems, case
    with pytest.raises(WeightsError, match=r"'0\.weight' must be torch\.float32 \[32, 16\]"):
        load_model(MLP, cases["a wrong shape"])
    with pytest.raises(WeightsError, match=r"missing tensor '2\.bias'"):
        load_model(MLP, cases["a missing tensor"])


@pytest.mark.parametrize(
    "garbage", [b"", b"\x00" * 7, struct.pack("<Q", 1 << 40) + b"{}", b"\x08" + b"\x00" * 7 + b"{bad json"]
)
def test_malformed_weight_bytes_are_a_typed_error(garbage: bytes) -> None:
    with pytest.raises(WeightsError, match="not valid safetensors"):
        load_model(MLP, garbage)


def test_model_create_checks_the_content_address() -> None:
    weights = init_model(LM, 3)
    model = Model.create(LM, weights, expected_hash=model_hash(LM, weights))
    assert model.spec["ff"] == 4 * LM["d_model"]
    with pytest.raises(HashMismatch):
        Model.create(LM, weights, expected_hash="0" * 64)


@pytest.mark.parametrize(
    ("spec", "problems"),
    [
        ({"arch": "rnn"}, ["unknown architecture 'rnn'"]),
        ([1, 2], ["spec must be a map"]),
        ({"in": 3}, ["unknown architecture None"]),
        ({"arch": ["mlp"]}, ["unknown architecture"]),
        ({**MLP, "in": 0, "dropout": 0.1}, ["unknown field 'dropout'", "'in' must be an int"]),
        ({"arch": "mlp", "in": 4, "hidden": [8, True]}, ["'hidden' must be a list", "missing field 'out'"]),
        ({**MLP, "activation": "swish"}, ["'activation' must be one of"]),
        ({**MLP, "activation": ["relu"]}, ["'activation' must be one of"]),
        (
            {**CNN, "kernel": 4, "in_shape": [1, 28]},
            ["'in_shape' must be a list of 3..3", "'kernel' must be odd"],
        ),
        ({**LM, "d_model": 30, "heads": 4}, ["must be divisible by 'heads'"]),
        ({**LM, "vocab": 1, "context": "8"}, ["'vocab' must be an int", "'context' must be an int"]),
        ({"arch": "mlp", "in": 65536, "hidden": [65536, 65536], "out": 1}, ["exceeds the limit"]),
    ],
)
def test_bad_specs_list_every_problem(spec: object, problems: list[str]) -> None:
    with pytest.raises(ArchitectureError) as info:
        validate_spec(spec)
    text = str(info.value)
    assert all(p in text for p in problems), text
    assert len(info.value.problems) >= len(problems)


def test_check_inputs_rejects_wrong_shapes_dtypes_and_values() -> None:
    check_inputs(MLP, torch.zeros(2, 16))
    check_inputs(LM, torch.zeros(2, 5, dtype=torch.int64))
    bad = [
        (MLP, torch.zeros(2, 15), "items must have shape (16)"),
        (MLP, torch.zeros(16), "must have shape (batch>=1, 16)"),
        (MLP, torch.zeros(2, 16, dtype=torch.float64), "dtype must be torch.float32"),
        (MLP, torch.full((2, 16), float("nan")), "NaN"),
        (CNN, torch.zeros(2, 3, 16, 15), "items must have shape (3, 16, 16)"),
        (LM, torch.zeros(2, 9, dtype=torch.int64), "sequence length must be in [1, 8]"),
        (LM, torch.full((2, 4), 20, dtype=torch.int64), "token ids must lie in [0, 20)"),
        (LM, torch.full((2, 4), -1, dtype=torch.int64), "token ids must lie in [0, 20)"),
    ]
    for spec, x, message in bad:
        with pytest.raises(InputError) as info:
            check_inputs(spec, x)
        assert message in str(info.value)


def test_tensor_hash_is_canonical() -> None:
    a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    base = tensors_hash({"a": a, "b": a[0]})
    assert tensors_hash({"b": a[0].clone(), "a": a.t().contiguous().t()}) == base  # layout, order
    assert tensors_hash({"a": a.reshape(4, 3), "b": a[0]}) != base  # shape
    assert tensors_hash({"a": a.double(), "b": a[0]}) != base  # dtype
    assert tensors_hash({"c": a, "b": a[0]}) != base  # name
    assert tensors_hash({"a": a, "b": a[0] + 0.0, "c": torch.zeros(0)}) != base  # an extra tensor
    assert tensors_hash({"a": torch.tensor(0.0)}) != tensors_hash(
        {"a": torch.tensor(-0.0)}
    )  # bits, not values
    assert tensor_list_hash([a, a[0]]) != tensor_list_hash([a[0], a])  # lists keep their order
    assert tensors_hash({"a": a.bfloat16()}) == tensors_hash({"a": a.bfloat16().clone()})


def test_strict_settings_pin_and_restore_process_settings() -> None:
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with strict_settings(seed=5):
        first = torch.rand(3)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.get_num_threads() == STRICT_THREADS
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cudnn.benchmark is False
        with strict_settings(), pytest.raises(DeterminismError):  # nested: shared, but must agree
            with strict_settings(threads=STRICT_THREADS + 1):
                pass
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.get_num_threads() == threads
    with strict_settings(seed=5):
        assert torch.equal(torch.rand(3), first)


def test_strict_settings_pin_the_thread_count_in_the_thread_that_enters() -> None:
    seen: list[tuple[int, int]] = []

    def worker() -> None:
        before = torch.get_num_threads()
        with strict_settings():
            inside = torch.get_num_threads()
        seen.append((inside, torch.get_num_threads() - before))

    with strict_settings():  # a strict block already active elsewhere must not stop the pinning
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert seen == [(STRICT_THREADS, 0)]


def test_build_module_on_meta_allocates_nothing() -> None:
    module = build_module({"arch": "mlp", "in": 4096, "hidden": [4096] * 8, "out": 10}, device="meta")
    assert all(p.is_meta for p in module.parameters())
