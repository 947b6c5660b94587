"""The batched engine: requests in, scheduled steps on the model, outputs out. No HTTP."""
