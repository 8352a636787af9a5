"""The built-in demo: a tiny face generator trained on half of scikit-image's LFW crops (see generator.py)."""
