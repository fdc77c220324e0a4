"""What makes a run's export ready for the Hugging Face hub: a model card, the Matryoshka keys servers read,
and a manifest of the trained sizes.

    record = card_record(config.model.name, data_source, source.model_dir, pairs)  # at a run's start,
                                                                                   # into model/starbucks.json
    write_hub_files(folder, workdir, step=N, num_layers=n)                          # into an export folder

The export folder gets:
  README.md       the card: the hub's YAML metadata (library_name, pipeline_tag, base_model, tags, datasets,
                  license where known), the measured table of every trained (layer, dim) size (the run's
                  newest evaluation in metrics.jsonl, or a line saying there is none), and usage for
                  sentence-transformers (`truncate_dim`), transformers, the n-layer export and serving
  config.json     plus `matryoshka_dimensions` (the trained dims at the folder's layer count) and
                  `is_matryoshka`: vLLM reads them to accept an embedding request's `dimensions`
  starbucks.json  the manifest: the trained (layer, dim) sizes, the layers this folder has, its dims, scores
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from starbucks_jax import storage
from starbucks_jax.runtime import workdir as workdir_lib
from starbucks_jax.training.run_scores import evaluated_step, run_scores, size_table

MANIFEST = "starbucks.json"
CARD = "README.md"
PACKAGED_MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # what model.name "minilm" is
TAGS = ("sentence-transformers", "sentence-similarity", "feature-extraction", "matryoshka", "2d-matryoshka",
        "starbucks", "starbucks_jax")


def card_record(model_name: str, data_source: str, model_dir, pairs) -> dict:
  """What the card needs that only the run's start knows: the trained sizes, the base model and the data
  when they are hub names, the base model's license (its own card's). A local or bucket path is left out:
  it means nothing on the hub, and the same run from a bucket then writes the same card."""
  base = PACKAGED_MINILM if model_name == "minilm" else str(model_name)
  is_hub_name = base.count("/") == 1 and not storage.is_remote(base) and not Path(base).exists()
  # Comma-separated: a source's files, or a mixture's sources; only hub data sets mean something on the hub.
  datasets = [s.strip()[3:].split(":")[0] for s in str(data_source).split(",") if s.strip().startswith("hf:")]
  return {"pairs": [list(p) for p in pairs], "base_model": base if is_hub_name else None,
          "datasets": list(dict.fromkeys(datasets)), "license": _license(model_dir)}


def _license(model_dir) -> str | None:
  card = Path(model_dir) / CARD
  meta = _front_matter(card.read_text(encoding="utf-8", errors="replace")) if card.is_file() else {}
  value = meta.get("license")
  return value if isinstance(value, str) else None


def _front_matter(text: str) -> dict:
  if not text.startswith("---"):
    return {}
  try:
    meta = yaml.safe_load(text.split("---", 2)[1])
  except (yaml.YAMLError, IndexError):
    return {}
  return meta if isinstance(meta, dict) else {}


def write_hub_files(folder, workdir, *, step: int, num_layers: int, mlm_head: bool = False) -> None:
  """Writes the card and the manifest into `folder` (a local export being staged) and adds the Matryoshka
  keys to its config.json, from the record in `workdir/model/starbucks.json` and the run's scores."""
  folder = Path(folder)
  record = dict(workdir_lib.read_model_dir(workdir)[1].get("card") or {})
  scores = run_scores(workdir, step)
  pairs = [tuple(p) for p in record.get("pairs") or sorted({p for by_pair in scores.values() for p in by_pair})]
  dims = sorted({dim for layer, dim in pairs if layer == num_layers})
  config = json.loads((folder / "config.json").read_text())
  if dims and not mlm_head:
    config.update(matryoshka_dimensions=dims, is_matryoshka=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  manifest = {"trained_pairs": [list(p) for p in pairs], "num_layers": num_layers,
              "hidden_size": config.get("hidden_size"), "matryoshka_dimensions": dims, "step": step,
              "evaluated_step": evaluated_step(workdir, step),
              "scores": {column: {f"{n},{d}": v for (n, d), v in by_pair.items()} for column, by_pair in scores.items()},
              "base_model": record.get("base_model"), "datasets": record.get("datasets", [])}
  (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
  (folder / CARD).write_text(_card(record, manifest, scores, pairs, mlm_head), encoding="utf-8")


def _metadata(record: dict, mlm_head: bool) -> str:
  meta = {"library_name": "transformers" if mlm_head else "sentence-transformers",
          "pipeline_tag": "fill-mask" if mlm_head else "sentence-similarity"}
  if record.get("base_model"):
    meta["base_model"] = record["base_model"]
  meta["tags"] = list(TAGS) if not mlm_head else ["smae", "starbucks", "starbucks_jax"]
  if record.get("datasets"):
    meta["datasets"] = record["datasets"]
  if record.get("license"):
    meta["license"] = record["license"]
  return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _card(record: dict, manifest: dict, scores: dict, pairs, mlm_head: bool) -> str:
  n, dims = manifest["num_layers"], manifest["matryoshka_dimensions"]
  base = f"`{record['base_model']}`" if record.get("base_model") else "a local model folder"
  data = ", ".join(f"`{d}`" for d in record.get("datasets") or []) or "local training data"
  served = ", ".join(f"({n}, {d})" for d in dims) or f"none (no size was trained at {n} layers)"
  parts = [_metadata(record, mlm_head), f"# A Starbucks (2D Matryoshka) model, {n} layers\n",
           f"Trained with starbucks_jax (the Starbucks method, arXiv 2410.13230) from {base} on {data} "
           f"to {manifest['step']} steps. One checkpoint serves every trained (layer, dim) size: the first n layers, "
           f"pooled, cut to the first d dimensions. This folder has {n} layers, so it serves {served}; "
           "a smaller size needs the n-layer export below.\n", "## Every trained size\n"]
  if scores:
    parts.append(f"Measured by the run's evaluation at step {manifest['evaluated_step']} "
                 f"(STS: Spearman and Pearson x100 of cosine similarity; BEIR: 0..1):\n\n{size_table(scores, pairs)}\n")
  else:
    parts.append("The run evaluated nothing, so no figure is given; trained sizes: "
                 + ", ".join(f"({a}, {b})" for a, b in pairs) + ".\n")
  if not mlm_head:
    parts.append(_usage(n, dims[0] if dims else manifest.get("hidden_size")))
  parts.append("## Citation\n\n```bibtex\n" + CITATION + "```\n")
  return "\n".join(parts)


def _usage(n: int, dim: int) -> str:
  return f"""## Usage

sentence-transformers, cut to {dim} dimensions:

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("PATH_OR_HUB_ID", truncate_dim={dim})
vectors = model.encode(["A man is playing a guitar.", "Dogs run."])
```

transformers (the pooling is the one in `1_Pooling/config.json`; mean pooling shown), then cut and normalise:

```python
import torch, transformers
tokenizer = transformers.AutoTokenizer.from_pretrained("PATH_OR_HUB_ID")
model = transformers.AutoModel.from_pretrained("PATH_OR_HUB_ID")
batch = tokenizer(["A man is playing a guitar."], padding=True, truncation=True, return_tensors="pt")
hidden = model(**batch).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).float()
vectors = torch.nn.functional.normalize(((hidden * mask).sum(1) / mask.sum(1))[:, :{dim}], dim=-1)
```

A smaller size as a standalone model (from the training workdir): `python -m starbucks_jax.export --workdir
WORKDIR --num-layers N --output OUT`; at any size without exporting: `python -m starbucks_jax.encode --model
WORKDIR --layer N --dim D --input texts.txt --output emb.npy`.

Serving: `config.json` lists `matryoshka_dimensions`, so vLLM, serving the folder as an embedding model, accepts an
embedding request's `dimensions` among them (`{{"input": [...], "dimensions": {dim}}}`).
"""


CITATION = """@article{zhuang2024starbucks,
  title = {Starbucks: Improved Training for 2D Matryoshka Embeddings},
  author = {Zhuang, Shengyao and Wang, Shuai and Zheng, Fabio and Koopman, Bevan and Zuccon, Guido},
  journal = {arXiv preprint arXiv:2410.13230},
  year = {2024}
}
"""
