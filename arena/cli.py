"""The `arena` command line. Thin: parse options, call the modules, print."""
from __future__ import annotations

import json
import sys

import click


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


@click.group()
@click.version_option(package_name="asr-arena")
def main():
    """ASR Arena: attacks and defenses against compressed speech recognisers."""


# ---------------------------------------------------------------- data (issue 2)
@main.group()
def data():
    """The built-in synthetic voice-search corpus."""


@data.command("build")
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "dev", "test"]),
              help="Split(s) to build (default: all three).")
@click.option("--seed", type=int, default=None,
              help="Corpus seed (default: public seed; test also reads ARENA_TEST_SEED).")
@click.option("--size", type=int, default=None, help="Number of utterances (default per split).")
@click.option("--workers", type=int, default=None)
def data_build(splits, seed, size, workers):
    """Synthesise splits with espeak-ng and write JSONL manifests + FLAC audio."""
    from arena.data.corpus import CorpusSpec, build_split, resolve_seed

    for split in splits or ("train", "dev", "test"):
        spec = CorpusSpec(split, resolve_seed(split, seed), size)
        path = build_split(spec, workers=workers)
        click.echo(f"{split}: {path}")


# ---------------------------------------------------------------- train / eval (issue 2)
@main.command()
@click.option("--out", "out_dir", default=None, help="Run folder (default runs/dense).")
@click.option("--steps", type=int, default=3000)
@click.option("--batch-seconds", type=float, default=60.0)
@click.option("--lr", type=float, default=1.5e-3)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--train-size", type=int, default=None, help="Use only the first N train utterances.")
@click.option("--model-config", default="{}", help="JSON overrides of the architecture config.")
@click.option("--arch", default="conformer-ctc")
@click.option("--no-resume", is_flag=True, help="Start over even if a checkpoint exists.")
@click.option("--export", default=None, help="Write the final weights here (safetensors).")
def train(out_dir, steps, batch_seconds, lr, device, train_size, model_config, arch, no_resume,
          export):
    """Train an ASR model on the built-in corpus, with checkpoints and resume."""
    from arena.asr.pipeline import train_default

    train_default(out_dir=out_dir, steps=steps, batch_seconds=batch_seconds, lr=lr,
                  device=device, train_size=train_size, model_config=json.loads(model_config),
                  arch=arch, resume=not no_resume, export=export)


@main.command("eval")
@click.option("--model", "model_name", default="dense", help="Zoo name or model file.")
@click.option("--split", default="test", type=click.Choice(["dev", "test"]))
@click.option("--limit", type=int, default=None, help="Only the first N utterances.")
@click.option("--device", default=None)
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(model_name, split, limit, device, as_json):
    """WER and CER of a model on a split (built first if missing)."""
    from arena.asr.pipeline import evaluate_named

    res = evaluate_named(model_name, split, limit=limit, device=device, progress=not as_json)
    if as_json:
        _echo_json(res)
    else:
        click.echo(f"model {res['model']}  split {res['split']}  utterances {res['n_utterances']}  "
                   f"audio {res['audio_seconds']:.0f} s  in {res['seconds']:.1f} s\n"
                   f"WER {res['wer']:.4f}  CER {res['cer']:.4f}")


# ---- compression (issue 3)
@main.command("models")
@click.option("--json", "as_json", is_flag=True)
def models_cmd(as_json):
    """List the zoo: file size, ratio to the dense fp32 file, WER fields."""
    from arena.compress.catalog import list_models

    rows = list_models()
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("the zoo is empty")
    for r in rows:
        ratio = "-" if r["size_ratio"] is None else f"{100 * r['size_ratio']:.2f}%"
        wer = "-" if r["wer"] is None else f"{r['wer']:.4f}"
        reg = "-" if r["rel_wer_regression"] is None else f"{100 * r['rel_wer_regression']:+.1f}%"
        click.echo(f"{r['name']:<12} {r['bytes']:>10} B  {ratio:>7} of dense  WER {wer}  "
                   f"rel {reg}  fine-tuned {r['fine_tuned']}")


@main.group("bench")
def bench_group():
    """Benchmarks (ratios against a baseline measured in the same process)."""


@bench_group.command("models")
@click.argument("names", nargs=-1)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--batch", type=int, default=8)
@click.option("--seconds", type=float, default=10.0, help="Audio seconds per utterance.")
@click.option("--repeats", type=int, default=10)
@click.option("--json", "as_json", is_flag=True)
def bench_models_cmd(names, device, batch, seconds, repeats, as_json):
    """Latency and peak memory of zoo models (all by default) vs the dense baseline."""
    from arena.compress.bench import bench_models

    rows = bench_models(list(names), device=device, batch=batch, seconds=seconds,
                        repeats=repeats, print_table=not as_json)
    if as_json:
        _echo_json(rows)
# ---- end compression (issue 3)


if __name__ == "__main__":
    main()
