"""Query and document prompts: one meaning in training, evaluation, mining, encode and the export.

A prompt is text put before every query (or passage) before tokenisation, exactly as sentence-transformers
does it: prompt + text, no separator added, so its tokens count against the max length. E5 writes
"query: " / "passage: "; Qwen3-Embedding writes the task into its query prompt,
"Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:", and none
for documents. A model that was trained with prompts embeds best with the same prompts, so a run's
prompts go into its export's `config_sentence_transformers.json` ("query", "document": only non-empty
ones), where `SentenceTransformer.encode_query` / `encode_document` find them, and everything that reads
a model (`evaluate`, `mine`, `encode --prompt-name`) reads them back.

Symmetric data (scored pairs, STS) takes one prompt, the query prompt, on both sentences (E5's and
Qwen3-Embedding's convention for similarity tasks), in training and in evaluation alike.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from starbucks_jax.errors import StarbucksError

QUERY = "query"
DOCUMENT = "document"
# The names sentence-transformers' encode_document tries, in turn.
DOCUMENT_NAMES = ("document", "passage", "corpus")
# What a mixture's prompts may hold (`data/mixture_config.py`): each source's name and instruction.
TEMPLATE_FIELDS = ("{name}", "{instruction}")


def check(prompt, where: str) -> str:
  """`prompt` if it is a string; otherwise an error naming `where` (a setting or an argument)."""
  if not isinstance(prompt, str):
    raise StarbucksError(f"{where} must be a string (\"\" for none), got {type(prompt).__name__} {prompt!r:.40}")
  return prompt


def with_prompt(prompt: str | None, texts: Sequence[str]) -> list[str]:
  """prompt + text for every text (sentence-transformers' own rule); the texts as they are without one."""
  return [prompt + text for text in texts] if prompt else list(texts)


def data_prompts(block, *, scored: bool = False) -> tuple[str, str]:
  """(query prompt, passage prompt) of a training data block: `query_prompt` / `passage_prompt`, or their older
  names `query_prefix` / `passage_prefix` (one of the two set, or both alike). `scored` pairs are symmetric:
  both sentences take the query prompt, and a different passage prompt is an error, not a silent choice."""
  found = []
  for side in ("query", "passage"):
    prompt = check(getattr(block, f"{side}_prompt"), f"data.{side}_prompt")
    prefix = check(getattr(block, f"{side}_prefix"), f"data.{side}_prefix")
    if prompt and prefix and prompt != prefix:
      raise StarbucksError(f"data.{side}_prompt {prompt!r} and data.{side}_prefix {prefix!r} (its older name) "
                           "differ; set one of them")
    found.append(prompt or prefix)
  query, passage = found
  if scored and passage and passage != query:
    raise StarbucksError(f"data.passage_prompt {passage!r} does not apply to scored pairs: both sentences take "
                         "data.query_prompt (one prompt for a symmetric task)")
  return query, query if scored else passage


def untemplated(prompt: str) -> str:
  """`prompt`, or "" when it holds a source's "{name}" or "{instruction}" (a template, no one text)."""
  return "" if any(field in prompt for field in TEMPLATE_FIELDS) else prompt


def for_export(query: str, document: str) -> dict[str, str]:
  """sentence-transformers' `prompts` of a model: {"query": ..., "document": ...}, only the non-empty ones."""
  return {name: prompt for name, prompt in ((QUERY, query), (DOCUMENT, document)) if prompt}


def query_prompt_of(prompts: Mapping[str, str]) -> str:
  """The query prompt a model's prompts hold, as `SentenceTransformer.encode_query` picks it ("" if none)."""
  return prompts.get(QUERY, "")


def document_prompt_of(prompts: Mapping[str, str]) -> str:
  """The document prompt, as `encode_document` picks it: "document", else "passage", else "corpus", else ""."""
  return next((prompts[name] for name in DOCUMENT_NAMES if name in prompts), "")


def named(prompts: Mapping[str, str], name: str, model) -> str:
  """The prompt called `name`, as `SentenceTransformer.encode(prompt_name=name)`: a name the model lacks is an
  error, listing those it has."""
  if name not in prompts:
    has = ", ".join(sorted(prompts)) or "none"
    raise StarbucksError(f"{model} has no prompt named {name!r} (its prompts: {has}); a model without one "
                         "encodes such texts as they are: leave out --prompt-name")
  return prompts[name]

