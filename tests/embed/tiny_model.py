"""A tiny test-only backbone registered as "tiny_test_net" (16x16 RGB input, 16-D cosine embeddings).

Imported by the embed tests and, through ``--config.imports=tests.embed.tiny_model``, by subprocess CLI runs,
so multi-process and kill/resume tests run in seconds on CPU. It has BatchNorm (running statistics) so the
variables look like a real backbone's ({"params", "batch_stats"}).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from synleak_jax.models import registry

TINY_SPEC = registry.InputSpec(
    height=16, width=16, channel_order="RGB", mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5),
    embedding_dim=16, metric="cosine", alignment="none")
TINY_EUCLID_SPEC = registry.InputSpec(
    height=16, width=16, channel_order="BGR", mean=(120.0, 117.0, 104.0), std=(256.0, 256.0, 256.0),
    embedding_dim=8, metric="euclidean", alignment="none", threshold=0.6)


class TinyNet(nn.Module):
    """[B, 16, 16, 3] float32 -> [B, dim] raw embeddings."""

    dim: int = 16
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False, **kw)(x)
        x = nn.BatchNorm(use_running_average=True, **kw)(x)
        x = nn.relu(x)
        x = nn.Conv(16, (3, 3), padding=((1, 1), (1, 1)), **kw)(x)
        # Asymmetric pooling weights so a horizontal flip really changes the embedding.
        w = jnp.linspace(0.5, 1.5, x.shape[2], dtype=x.dtype)[None, None, :, None]
        x = jnp.mean(x * w, axis=(1, 2))
        return nn.Dense(self.dim, **kw)(x)


def _register(name, spec, dim):
    try:
        registry.register(name, spec, family="tiny_test", description="test-only")(
            lambda dtype=jnp.float32, param_dtype=jnp.float32: TinyNet(dim, dtype, param_dtype))
    except ValueError:  # already registered (module imported under two names)
        pass


_register("tiny_test_net", TINY_SPEC, 16)
_register("tiny_test_euclid", TINY_EUCLID_SPEC, 8)


def init_variables(name: str = "tiny_test_net", seed: int = 0):
    """Random variables with non-trivial BatchNorm statistics."""
    spec = registry.get_spec(name)
    model = registry.get_model(name)
    v = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, spec.height, spec.width, 3)))
    r = np.random.default_rng(seed + 1)
    # Means centred near 0: with means in [0.5, 1.5] the ReLU after BatchNorm was dead for most channels of the
    # euclidean variant (inputs in [-0.47, 0.53]), so some seeds gave all-zero embeddings and a flip that changed
    # nothing (CI seed 3054095131).
    bn = v["batch_stats"]["BatchNorm_0"]
    bs = {"BatchNorm_0": {"mean": np.asarray(r.normal(0.0, 0.05, bn["mean"].shape), np.float32),
                          "var": np.asarray(r.uniform(0.5, 1.5, bn["var"].shape), np.float32)}}
    return {"params": v["params"], "batch_stats": bs}
