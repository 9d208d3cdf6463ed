"""The engine: the scheduler (plain request data in, batched prefill and decode out) and
the model runtime (the one thread that runs the model: tensor work only)."""
