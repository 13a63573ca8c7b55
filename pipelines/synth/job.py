"""``stf synth``: writes the corpus a spec describes."""

from __future__ import annotations

from pipelines.synth.corpus import CorpusInfo, write_corpus
from pipelines.synth.spec import SynthSpec


def run(spec: SynthSpec) -> CorpusInfo:
    """Writes the corpus a spec describes."""
    return write_corpus(
        spec.output,
        n=spec.n,
        seed=spec.seed,
        width=spec.width,
        height=spec.height,
        n_eval=spec.n_eval,
    )


def summary_line(spec: SynthSpec, info: CorpusInfo) -> str:
    r, b = info.records, info.baselines
    return (
        f"synth {spec.output}: {r['pretrain']} captions (pretrain.json), {r['finetune']} "
        f"conversations (finetune.jsonl), {r['eval']} eval questions (eval.jsonl); "
        f"eval baselines: chance {b.chance:.1%}, majority answer {b.majority:.1%}"
    )
