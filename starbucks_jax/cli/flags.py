"""The flags the commands share, each declared once, with one help text: which model (`add_model_flags`),
which (layer, dim) size (`add_size_flags`), how texts are encoded (`add_encoding_flags`), the prompts put
before queries and passages (`add_prompt_flags`) and how a corpus is searched (`add_search_flags`). A command
whose flag genuinely differs passes a parameter."""

from __future__ import annotations

from starbucks_jax.model.pooling import POOLINGS, SIMILARITIES

DTYPES = ("float32", "bfloat16")  # the compute dtypes (the names of training/config.py's DTYPES)
BATCH_SIZE = 32                   # texts per encoding batch
CHUNK_SIZE = 8192                 # corpus rows scored on the device at once
QUERY_MAX_LENGTH = 32             # tokens per query and per passage, where no --max-length says otherwise
PASSAGE_MAX_LENGTH = 256

MODEL_HELP = "Hugging Face folder, hub name or training workdir"
DEFAULT_MODEL = " (default: packaged all-MiniLM-L6-v2)"
STEP_HELP = "with a workdir: the checkpoint step (default: newest)"
POOLING_HELP = (f"pooling kind: one of {', '.join(POOLINGS)} (default: the model's: its sentence-transformers "
                "pooling, else its family's default)")
PACKING_HELP = ("lay the texts end to end in rows rather than padding each to its batch's length: the same "
                "vectors, fewer pad tokens computed, one compiled shape per call")


def add_model_flags(parser, *, default_model: bool = True) -> None:
  """--model and --step; default_model=False for a command with no default model."""
  add_model_flag(parser, default_model=default_model)
  add_step_flag(parser)


def add_model_flag(parser, *, default_model: bool = True) -> None:
  """--model alone, into a parser or a group (export's --model | --workdir)."""
  parser.add_argument("--model", help=MODEL_HELP + (DEFAULT_MODEL if default_model else ""))


def add_step_flag(parser) -> None:
  parser.add_argument("--step", type=int, help=STEP_HELP)


def add_size_flags(parser) -> None:
  """--layer and --dim: the one (layer, dim) size a command encodes at."""
  parser.add_argument("--layer", type=int, help="use the output of this layer, 1..num_layers (default: last)")
  parser.add_argument("--dim", type=int, help="keep the first DIM coordinates (default: hidden size)")


def add_pooling_flag(parser, *, pooling_help: str = POOLING_HELP) -> None:
  """--pooling, its choices read from model/pooling.py's POOLINGS; export passes its own help."""
  parser.add_argument("--pooling", choices=tuple(POOLINGS), help=pooling_help)


def add_encoding_flags(parser, *, normalize: bool = False, max_length: bool = True,
                       queries_and_passages: bool = False) -> None:
  """--pooling, --normalize (with normalize), the length flags (`add_length_flags`), --batch-size,
  --packing and --dtype."""
  add_pooling_flag(parser)
  if normalize:
    parser.add_argument("--normalize", action="store_true", help="L2-normalise after the cut to DIM")
  add_length_flags(parser, max_length=max_length, queries_and_passages=queries_and_passages)
  parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"texts per batch (default {BATCH_SIZE})")
  parser.add_argument("--packing", action="store_true", help=PACKING_HELP)
  parser.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype (default float32)")


def add_length_flags(parser, *, max_length: bool = True, queries_and_passages: bool = False) -> None:
  """--max-length and/or --query-max-length and --passage-max-length. Beside --max-length the two parse
  to None and `query_passage_lengths` fills them in (from --max-length, else 32 and 256); alone, to 32 and 256."""
  if max_length:
    parser.add_argument("--max-length", type=int, help="tokens per text (default: the model's max_seq_length)")
  if not queries_and_passages:
    return
  for kind, default in (("query", QUERY_MAX_LENGTH), ("passage", PASSAGE_MAX_LENGTH)):
    parser.add_argument(f"--{kind}-max-length", type=int, default=None if max_length else default,
                        help=f"tokens per {kind} (default: {'--max-length if given, else ' if max_length else ''}"
                        f"{default})")


def query_passage_lengths(args) -> tuple[int, int]:
  """(query, passage) max lengths of parsed flags: each given one, else --max-length, else 32 and 256."""
  fallback = getattr(args, "max_length", None)
  return (args.query_max_length or fallback or QUERY_MAX_LENGTH,
          args.passage_max_length or fallback or PASSAGE_MAX_LENGTH)


def add_prompt_flags(parser, *, older_names: bool = False) -> None:
  """--query-prompt and --passage-prompt (`data/prompts.py`); older_names: also as --query-prefix and
  --passage-prefix, mine's first names for them. Unset, they parse to None: `query_passage_prompts`."""
  for kind, example in (("query", "'query: '"), ("passage", "'passage: '")):
    names = [f"--{kind}-prompt"] + ([f"--{kind}-prefix"] if older_names else [])
    parser.add_argument(*names, dest=f"{kind}_prompt", metavar="TEXT",
                        help=f"put before every {kind} (e.g. {example}; '' for none; default: the model's own "
                        f"{'query' if kind == 'query' else 'document'} prompt, from a workdir's run or a folder's "
                        "sentence-transformers prompts, else none)")


def query_passage_prompts(args, model_prompts) -> tuple[str, str]:
  """(query, passage) prompts of parsed flags: each given one, else the model's (`model_prompts`: its
  sentence-transformers prompts), so that a model trained with prompts is used with them."""
  from starbucks_jax.data import prompts
  return (prompts.query_prompt_of(model_prompts) if args.query_prompt is None else args.query_prompt,
          prompts.document_prompt_of(model_prompts) if args.passage_prompt is None else args.passage_prompt)


def add_search_flags(parser, *, sts: bool = False) -> None:
  """--similarity and --chunk-size of exact search over a corpus; sts: the command also scores STS."""
  parser.add_argument("--similarity", choices=tuple(SIMILARITIES), default="cosine",
                      help=f"retrieval score: one of {', '.join(SIMILARITIES)} (default cosine)"
                      + ("; STS always uses cosine" if sts else ""))
  parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE,
                      help=f"corpus rows scored on the device at once (default {CHUNK_SIZE})")
