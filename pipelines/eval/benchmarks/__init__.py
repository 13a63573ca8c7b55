"""The benchmarks ``stf eval`` scores, by the name a spec gives (``benchmark:``)."""

from pipelines.eval.benchmarks.base import Answer, Benchmark, Item, Question, Scored
from pipelines.eval.benchmarks.custom import Custom
from pipelines.eval.benchmarks.gqa import Gqa
from pipelines.eval.benchmarks.mmbench import MmBench, MmBenchCn
from pipelines.eval.benchmarks.mme import Mme
from pipelines.eval.benchmarks.pope import Pope
from pipelines.eval.benchmarks.sqa import ScienceQaImg
from pipelines.eval.benchmarks.textvqa import TextVqa
from pipelines.eval.benchmarks.vqa import VizWiz, VqaV2

# In the order of the paper's table.
BENCHMARKS: dict[str, type[Benchmark]] = {
    b.name: b
    for b in (VqaV2, Gqa, VizWiz, ScienceQaImg, TextVqa, Pope, Mme, MmBench, MmBenchCn, Custom)
}

__all__ = ["BENCHMARKS", "Answer", "Benchmark", "Item", "Question", "Scored"]
