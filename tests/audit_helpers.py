"""Embedding sets with exact float scores for audit tests (rows of +-1/sqrt(D): unit norm exactly, dot products
are multiples of 1/D, exact in float32 and float64)."""

import numpy as np

D = 64


def signs(rng, n):
    return rng.choice([-1.0, 1.0], size=(n, D))


def flip(rng, x, k):
    """x with k random coordinates negated per row."""
    x = x.copy()
    for row in x:
        row[rng.choice(D, k, replace=False)] *= -1
    return x


def make_sets(rng, n_ids=60, per_id=5, n_fresh=200, n_planted=20, n_non=100):
    """members (labelled identities), synthetic (fresh + planted near-copies of members), non-members."""
    centres = signs(rng, n_ids)
    labels = np.repeat(np.arange(n_ids), per_id)
    members = flip(rng, centres[labels], 6)
    planted_real = np.sort(rng.choice(len(members), n_planted, replace=False))
    copies = flip(rng, members[planted_real], 1)
    synthetic = np.concatenate([signs(rng, n_fresh), copies])
    planted_syn = np.arange(n_fresh, n_fresh + n_planted)
    nonmembers = signs(rng, n_non)
    scale = 1 / np.sqrt(D)
    return {"members": (members * scale).astype(np.float32), "member_labels": labels,
            "synthetic": (synthetic * scale).astype(np.float32), "nonmembers": (nonmembers * scale).astype(np.float32),
            "planted_syn": planted_syn, "planted_real": planted_real}


def write_sets(tmp_path, sets):
    paths = {}
    for role in ("synthetic", "members", "nonmembers"):
        p = tmp_path / f"{role}.npy"
        np.save(p, sets[role])
        paths[role] = str(p)
    np.save(tmp_path / "member_labels.npy", sets["member_labels"])
    paths["member_labels"] = str(tmp_path / "member_labels.npy")
    (tmp_path / "syn_names.txt").write_text("".join(f"syn_{i:04d}\n" for i in range(len(sets["synthetic"]))))
    paths["syn_names"] = str(tmp_path / "syn_names.txt")
    return paths


def embeddings_config(paths, out_dir):
    from synleak_jax.configs import embeddings

    cfg = embeddings.get_config()
    cfg.output_dir = str(out_dir)
    for role in ("synthetic", "members", "nonmembers"):
        cfg.data[role].path = paths[role]
    cfg.data.members.labels = paths["member_labels"]
    cfg.data.synthetic.names = paths["syn_names"]
    cfg.attack.fmrs = (1e-2, 1e-3)
    cfg.report.gallery_n = 5
    return cfg
