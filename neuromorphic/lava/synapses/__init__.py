"""``Synapses``: every static Dense connection of a network in one Lava Process (own package:
Lava imports every module beside a Process to find its models)."""
