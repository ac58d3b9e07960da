"""Model IR and neuromorphic backends (Lava, Brian2, NIR) for spikeformer models.

Empty for now: the IR and backends arrive in later issues. Imports only from ``spikeformer``.
"""
