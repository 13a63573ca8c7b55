"""The Ray jobs of LLaVA-STF (preprocess, train, serve, infer, eval, submit) and the ``stf`` CLI."""
