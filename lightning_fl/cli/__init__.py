"""The `lightning-fl` command line (Hydra). The only part of the package that imports Hydra."""
