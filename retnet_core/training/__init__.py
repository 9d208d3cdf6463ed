"""Training, data, dialogue generation, evaluation and the Transformer baseline.

Kept apart from the model: ``import retnet_core`` never loads this subpackage, the
chit-chat corpus or matplotlib. Modules here may import the model; the model never
imports them.
"""
