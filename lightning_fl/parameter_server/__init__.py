"""The math of the parameter server: torch only, no Lightning.

``sharding`` splits the flat parameters into per-server buckets; ``staleness`` keeps the clocks and
version bounds of stale synchronous parallel. ``lightning_fl.strategies.parameter_server`` drives them.
"""
