"""``SpikeRecorder``: writes every received vector straight into a numpy file (own package:
Lava imports every module beside a Process to find its models)."""
