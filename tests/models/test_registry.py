"""Registry entries of the ArcFace-family backbones (names, families, input specs)."""

import jax
import jax.numpy as jnp
import pytest

from synleak_jax.models import available, get_entry, get_model, get_spec

ARCFACE = {f"iresnet{d}": "iresnet" for d in (18, 34, 50, 100, 200)}
ARCFACE.update({f"adaface_ir{d}": "adaface_ir" for d in (18, 50, 101)})
ARCFACE["mobilefacenet"] = "mobilefacenet"


@pytest.mark.parametrize("name", sorted(ARCFACE))
def test_registered_with_family_and_spec(name):
    assert name in available()
    entry = get_entry(name)
    assert entry.family == ARCFACE[name]
    spec = get_spec(name)
    assert (spec.height, spec.width, spec.embedding_dim, spec.metric, spec.alignment) == (
        112, 112, 512, "cosine", "arcface112")
    assert spec.mean == (127.5,) * 3 and spec.std == (127.5,) * 3
    assert spec.channel_order == ("BGR" if name.startswith("adaface") else "RGB")
    assert spec.threshold is None


@pytest.mark.parametrize("name", ["iresnet50", "adaface_ir101", "mobilefacenet"])
def test_factory_passes_dtypes(name):
    model = get_model(name, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    assert model.dtype == jnp.bfloat16 and model.param_dtype == jnp.float32
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 112, 112, 3))))
    assert set(variables) == {"params", "batch_stats"}
    out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((5, 112, 112, 3), jnp.float32))
    assert out.shape == (5, 512)


def test_unknown_name_lists_available():
    with pytest.raises(KeyError, match="iresnet50"):
        get_model("iresnet51")
