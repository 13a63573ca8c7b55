"""One model replica of the batch-inference actor pool: reads and decodes a batch's images,
generates for the rows whose image is fine, and returns every row, errors included."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.images import checked_image
from pipelines.infer.output import OUTPUT_SCHEMA
from pipelines.infer.spec import InferSpec
from pipelines.storage import read_many
from stf_model.errors import ModelInputError
from stf_model.records import RecordError

if TYPE_CHECKING:
    from stf_model.generation import Completion


class Answerer:
    """The map stage's callable class (one instance per actor)."""

    def __init__(self, spec: InferSpec, progress: Any = None):
        # torch and the model code are imported here, in the replica: the driver imports this
        # module only to name the class, and stays free of them (about 2 s of start-up).
        from pipelines.models import load_generator
        from stf_model.generation import SamplingParams

        self.spec = spec
        self.progress = progress  # a RowCounter handle (pipelines.infer.progress), or None
        self.generator = load_generator(spec.model, spec.storage)
        self.params = SamplingParams(spec.max_new_tokens, spec.temperature, spec.top_p)
        self._pixels = spec.max_image_pixels

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        from stf_model.generation import ChatPrompt  # imported by __init__ already: a lookup

        ids, urls, texts = (list(batch[k]) for k in ("id", "image", "prompt"))
        data = read_many([u for u in urls if u is not None], self.spec.storage)
        prompts, rows, errors = [], [], {}
        for row, (url, text) in enumerate(zip(urls, texts, strict=True)):
            try:  # a row without an image (text_only_rows) is asked the text alone
                images = [] if url is None else [checked_image(url, data[url], self._pixels)]
            except RecordError as err:
                errors[row] = (err.reason, err.detail)
                continue
            messages = self._messages(text, with_image=bool(images))
            prompt = ChatPrompt(self.generator.render(messages), images, self.params)
            try:  # checked per row, so that one bad prompt cannot fail the batch's generate
                self.generator.count_prompt_tokens(prompt)
            except ModelInputError as err:
                errors[row] = ("prompt_placeholders", str(err))
                continue
            prompts.append(prompt)
            rows.append(row)
        results = dict(zip(rows, self.generator.generate(prompts), strict=True)) if prompts else {}
        out: dict[str, list] = {name: [] for name in OUTPUT_SCHEMA.names}
        for row, row_id in enumerate(ids):
            done: Completion | None = results.get(row)
            out["id"].append(row_id)
            out["image"].append(urls[row])
            out["prompt"].append(texts[row])
            out["answer"].append(done.text if done else None)
            out["finish_reason"].append(done.finish_reason if done else None)
            out["prompt_tokens"].append(done.prompt_tokens if done else None)
            out["completion_tokens"].append(done.completion_tokens if done else None)
            reason, detail = errors.get(row, (None, None))
            out["error"].append(reason)
            out["error_detail"].append(detail)
            out["model_id"].append(self.spec.served_model_id)
        if self.progress is not None:
            self.progress.add.remote(len(ids), len(errors))
        return out

    def _messages(self, text: str, with_image: bool) -> list[dict[str, Any]]:
        system = [{"role": "system", "content": self.spec.system}] if self.spec.system else []
        content = [{"type": "image"}] if with_image else []
        user = {"role": "user", "content": [*content, {"type": "text", "text": text}]}
        return [*system, user]
