"""Bundled Hydra configs (a package so that Hydra can find them with pkg://findial.configs)."""
