"""``stf serve``: a Ray Serve application with the OpenAI chat-completions API over a model
directory. Its concerns, as Ray Serve LLM keeps them apart:

- :mod:`~pipelines.serve.spec`: the job's spec (loading it imports neither FastAPI nor Serve);
- :mod:`~pipelines.serve.protocol`: the OpenAI request/response models and the error type;
- :mod:`~pipelines.serve.images` and :mod:`~pipelines.serve.intake`: every request check (key,
  size, schema, images, template, context), runnable without a replica;
- :mod:`~pipelines.serve.app`: the FastAPI ingress and the Serve deployment (batching, streaming);
- :mod:`~pipelines.serve.page`: the chat page at ``/`` (files in ``ui/``, sent as one page);
- :mod:`~pipelines.serve.job`: the application builders and ``stf serve``'s ``run``.

``pipelines.serve.job:app_builder`` is the entry RayService and Serve config files name. Loading
this package loads the spec alone (no Serve, no FastAPI).
"""

from pipelines.serve.spec import ServeSpec

__all__ = ["ServeSpec"]
