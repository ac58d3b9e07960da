"""Processes of on-chip learning beside Lava's ``LearningDense``/``LearningSparse`` (own package:
Lava imports every module beside a Process to find its models):

    RuleInputs                the three_factor rule's y inputs of one connection, every step
    RecordingLearningDense    LearningDense that writes its weights after every sample to a file
"""
