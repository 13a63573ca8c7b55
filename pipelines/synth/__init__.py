"""A synthetic LLaVA-format corpus that a tiny model can learn: coloured shapes in quadrants.

``stf synth --set output=DIR`` writes real JPEGs and three LLaVA files:

- ``pretrain.json`` (a JSON list, like LCS-558K): one caption per training image;
- ``finetune.jsonl``: multi-turn short-answer questions about the training images, plus some
  text-only records (as in mix665k);
- ``eval.jsonl``: one question per held-out image with its ground-truth answer and type
  (``question_id``, ``image``, ``text``, ``answer``, ``question_type``), LLaVA's question-file shape.

``synth.json`` records the answer sets and two baselines on the eval split: uniform chance and
always answering the most common training answer of the question's type. A trained model must beat
both by a clear margin.
"""
