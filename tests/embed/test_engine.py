"""Engine parity: jit over 8 forced CPU devices equals per-image model.apply on one device (float64 norm)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synleak_jax.embed import engine as eng
from synleak_jax.models import registry
from tests.embed import tiny_model


def _reference(name, variables, images, flip, normalize):
    """Per-image model.apply on one device; combine/normalise in float64 numpy."""
    model = registry.get_model(name)
    dev = jax.devices()[0]
    v = jax.device_put(variables, dev)
    out = []
    for img in images:
        x = jax.device_put(img[None], dev)
        e = np.asarray(model.apply(v, x), np.float64)[0]
        if flip:
            ef = np.asarray(model.apply(v, jax.device_put(img[None, :, ::-1], dev)), np.float64)[0]
            e = e + ef if normalize else 0.5 * (e + ef)
        if normalize:
            e = e / np.linalg.norm(e)
        out.append(e)
    return np.stack(out)


@pytest.mark.parametrize("name,flip", [("tiny_test_net", False), ("tiny_test_net", True), ("tiny_test_euclid", True)])
def test_engine_matches_single_device_apply(rng, name, flip):
    assert jax.device_count() == 8
    spec = registry.get_spec(name)
    variables = tiny_model.init_variables(name, seed=int(rng.integers(1 << 30)))
    n = 37  # not a multiple of the batch: exercises padding
    images = spec.normalize(rng.integers(0, 256, (n, spec.height, spec.width, 3)).astype(np.uint8))
    e = eng.EmbeddingEngine(registry.get_model(name), variables, spec, flip=flip)
    assert e.mesh.devices.size == 8
    got = eng.embed_array(e, images, batch_size=16)
    normalize = spec.metric == "cosine"
    ref = _reference(name, variables, images, flip, normalize)
    assert got.shape == (n, spec.embedding_dim) and got.dtype == np.float32
    assert np.max(np.abs(got - ref)) <= 1e-5
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    else:  # euclidean models keep their raw scale
        assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    if flip:  # flip TTA must change the result (the model is not flip-invariant)
        plain = eng.embed_array(eng.EmbeddingEngine(registry.get_model(name), variables, spec), images, 16)
        # Relative to the embedding scale (the euclidean variant's raw outputs are small); over 300 seeds the
        # smallest change was 7% of max|embedding|, so 1% cannot fail by chance but a flip dropped would.
        assert np.max(np.abs(plain - got)) > 1e-2 * np.max(np.abs(got))


def test_bf16_compute_and_fp16_storage(rng):
    spec = registry.get_spec("tiny_test_net")
    variables = tiny_model.init_variables(seed=3)
    images = spec.normalize(rng.integers(0, 256, (24, 16, 16, 3)).astype(np.uint8))
    ref = eng.embed_array(eng.EmbeddingEngine(registry.get_model("tiny_test_net"), variables, spec), images, 8)
    e = eng.EmbeddingEngine(registry.get_model("tiny_test_net", dtype=jnp.bfloat16), variables, spec,
                            storage_dtype="float16")
    got = eng.embed_array(e, images, 8)
    assert got.dtype == np.float16
    # bf16 has an 8-bit mantissa: cosine to the float32 result close to 1 but not bit-equal.
    cos = np.sum(got.astype(np.float32) * ref, axis=1)
    assert np.all(cos > 0.99) and np.max(np.abs(got.astype(np.float32) - ref)) > 0


def test_padding_and_rejects_never_reach_results(rng):
    spec = registry.get_spec("tiny_test_net")
    variables = tiny_model.init_variables(seed=5)
    e = eng.EmbeddingEngine(registry.get_model("tiny_test_net"), variables, spec)
    n = 13
    images = rng.standard_normal((n, 16, 16, 3)).astype(np.float32)
    codes = np.zeros(n, np.int32)
    codes[[2, 7]] = [3, 8]
    ids = np.arange(100, 100 + n)
    res = list(e.run(eng.array_batches(images, ids, 8, reject_codes=codes), 8, num_steps=4))
    assert len(res) == 4  # 2 real batches + 2 padding steps
    got_ids = np.concatenate([r.record_id for r in res])
    np.testing.assert_array_equal(got_ids, np.delete(ids, [2, 7]))
    np.testing.assert_array_equal(np.concatenate([r.rejected_ids for r in res]), ids[[2, 7]])
    np.testing.assert_array_equal(np.concatenate([r.reject_codes for r in res]), [3, 8])
    with pytest.raises(ValueError, match="more than the planned"):
        list(e.run(eng.array_batches(images, ids, 8), 8, num_steps=1))


def test_bad_batch_shape_is_named(rng):
    spec = registry.get_spec("tiny_test_net")
    e = eng.EmbeddingEngine(registry.get_model("tiny_test_net"), tiny_model.init_variables(), spec)
    bad = eng.array_batches(np.zeros((8, 20, 20, 3), np.float32), np.arange(8), 8)
    with pytest.raises(ValueError, match=r"model expects \(8, 16, 16, 3\)"):
        list(e.run(bad, 8))
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        e.local_batch_size(12)


@pytest.mark.slow  # ~1 min each on the shared 2-core machine (XLA compile of a full backbone)
@pytest.mark.parametrize("name", ["mobilefacenet", "dlib_resnet_v1"])
def test_real_registry_model_on_8_devices(rng, name):
    """A real registered backbone (random init) through the sharded engine equals per-image apply."""
    spec = registry.get_spec(name)
    model = registry.get_model(name)
    variables = model.init(jax.random.PRNGKey(int(rng.integers(1 << 30))),
                           jnp.zeros((1, spec.height, spec.width, 3), jnp.float32))
    images = spec.normalize(rng.integers(0, 256, (9, spec.height, spec.width, 3)).astype(np.uint8))
    e = eng.EmbeddingEngine(model, variables, spec, flip=True)
    got = eng.embed_array(e, images, batch_size=8)
    normalize = spec.metric == "cosine"
    assert e.normalize == normalize and e.flip_combine == ("sum" if normalize else "mean")
    ref = _reference(name, variables, images, True, normalize)
    scale = 1.0 if normalize else max(1.0, float(np.max(np.abs(ref))))
    assert np.max(np.abs(got - ref)) <= 1e-5 * scale


def _ynn_fusion_ranks(name: str) -> tuple[int, int]:
    """Compiles the engine step of a registered model (batch 2, one CPU device); returns (number of
    convolutions on XLA's own kernels, number of YNNPACK fusions with a rank-4 output, i.e. convolutions)."""
    spec = registry.get_spec(name)
    model = registry.get_model(name)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, spec.height, spec.width, 3), jnp.float32))
    e = eng.EmbeddingEngine(model, variables, spec, mesh=eng.make_data_mesh(jax.devices()[:1]))
    e.compile(2)
    hlo = next(iter(e._compiled.values())).as_text()
    ynn_outputs = [line.split("=")[1].split("{")[0].strip() for line in hlo.splitlines()
                   if line.strip().startswith("%ynn_fusion")]
    return hlo.count("convolution("), sum(out.count(",") == 3 for out in ynn_outputs)


@pytest.mark.slow  # ~18 s (compiles three backbones to read their HLO); a speed guard, not a correctness test
def test_cpu_step_compiles_convolutions_outside_ynnpack():
    """On CPU the engine compiles with ``cpu_compiler_options()``: no convolution is left to YNNPACK, except
    for a model that opts out (MobileFaceNet, whose depthwise convolutions YNNPACK runs faster)."""
    from synleak_jax.models.layers import cpu_compiler_options
    if not cpu_compiler_options("cpu"):
        pytest.skip("this XLA does not accept the Eigen-convolution option")
    eigen, ynn = _ynn_fusion_ranks("iresnet18")
    assert eigen >= 21 and ynn == 0  # every conv of the backbone on XLA's own kernels
    eigen, ynn = _ynn_fusion_ranks("mobilefacenet")
    assert ynn > 0
