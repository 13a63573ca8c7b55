"""``stf eval`` and ``stf eval-suite``: the paper's benchmarks from their published files.

- :mod:`~pipelines.eval.spec`: the specs (no framework imported);
- :mod:`~pipelines.eval.files`: reading published files (JSON, JSONL, TSV, folders; local or S3);
- :mod:`~pipelines.eval.benchmarks`: one module per benchmark (its question file, ground truth
  and official rules), their shared records in ``base``;
- :mod:`~pipelines.eval.vqa_accuracy`: the VQA API's and EvalAI's answer normalisation;
- :mod:`~pipelines.eval.answers`: LLaVA's answers file;
- :mod:`~pipelines.eval.job`: the driver (generation through ``stf infer``, scoring, report);
- :mod:`~pipelines.eval.report` and :mod:`~pipelines.eval.page`: report.json and report.html;
- :mod:`~pipelines.eval.suite`: several benchmarks and models, the papers' table.
"""
