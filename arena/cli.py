"""The `arena` command line. Thin: parse options, call the modules, print."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from arena.leaderboard import safe_text


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


@click.group()
@click.version_option(package_name="asr-arena")
def main():
    """ASR Arena: attacks and defenses against compressed speech recognisers."""


# ---------------------------------------------------------------- data
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


# ---------------------------------------------------------------- asr: training and evaluation
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
@click.option("--init", default=None, help="Start from these weights (state.pt or safetensors).")
@click.option("--warmup", type=int, default=300)
def train(out_dir, steps, batch_seconds, lr, device, train_size, model_config, arch, no_resume,
          export, init, warmup):
    """Train an ASR model on the built-in corpus, with checkpoints and resume."""
    from arena.asr.pipeline import train_default

    train_default(out_dir=out_dir, steps=steps, batch_seconds=batch_seconds, lr=lr,
                  device=device, train_size=train_size, model_config=json.loads(model_config),
                  arch=arch, resume=not no_resume, export=export, init=init, warmup=warmup)


@main.command("eval")
@click.option("--model", "model_name", default="dense", help="Zoo name or model file.")
@click.option("--split", default="test", type=click.Choice(["dev", "test"]))
@click.option("--limit", type=int, default=None, help="Only the first N utterances.")
@click.option("--device", default=None)
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(model_name, split, limit, device, as_json):
    """WER and CER of a model on a split (built first if missing)."""
    from arena.zoo.build import evaluate_named

    res = evaluate_named(model_name, split, limit=limit, device=device, progress=not as_json)
    if as_json:
        _echo_json(res)
    else:
        click.echo(f"model {res['model']}  split {res['split']}  utterances {res['n_utterances']}  "
                   f"audio {res['audio_seconds']:.0f} s  in {res['seconds']:.1f} s\n"
                   f"WER {res['wer']:.4f}  CER {res['cer']:.4f}")


# ---------------------------------------------------------------- zoo
@main.command("publish-dense")
@click.argument("checkpoint", default="runs/dense/final.safetensors")
@click.option("--device", default=None)
def publish_dense_cmd(checkpoint, device):
    """Put a trained checkpoint in the zoo as `dense` and write its model card."""
    from arena.zoo.build import publish_dense

    _echo_json(publish_dense(checkpoint, device=device))


@main.command()
@click.option("--recipe", required=True, help="e.g. int8, int4, int2, 2:4, 1:4, int4+2:4.")
@click.option("--steps", type=int, default=None, help="Fine-tuning steps (default per recipe).")
@click.option("--post-training", is_flag=True, help="No fine-tuning (same as --steps 0).")
@click.option("--device", default=None)
@click.option("--out", default=None, help="Write the packed file here instead of the zoo.")
@click.option("--distill/--no-distill", default=None,
              help="Fine-tune against the dense model's frame posteriors as well as the CTC loss "
                   "(default: as the recipe's zoo entry was built).")
@click.option("--lr", type=float, default=None,
              help="Peak fine-tuning learning rate (default: the recipe's).")
@click.option("--json", "as_json", is_flag=True)
def compress(recipe, steps, post_training, device, out, distill, lr, as_json):
    """Compress the dense model with a recipe, fine-tuned as its zoo entry was (steps,
    distillation and learning rate recorded per recipe), pack it, evaluate it."""
    from arena.core.device import default_device
    from arena.zoo.build import build_variant, fine_tuning_for

    plan = fine_tuning_for(recipe, 0 if post_training else steps, distill, lr)
    card = build_variant(recipe, fine_tune=plan, device=default_device(device), out_path=out,
                         progress=not as_json)
    if as_json:
        _echo_json(card)
    else:
        for k, v in card.items():
            click.echo(f"{k:20s} {v}")


@main.command("models")
@click.option("--json", "as_json", is_flag=True)
@click.option("--refresh", is_flag=True, help="Re-evaluate every model and update its card first.")
@click.option("--device", default=None)
def models_cmd(as_json, refresh, device):
    """List the zoo: file size, ratio to the dense fp32 file, WER fields."""
    from arena.zoo.build import refresh_cards
    from arena.zoo.registry import list_models

    if refresh:
        refresh_cards(device=device, progress=not as_json)
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


# ---------------------------------------------------------------- submissions
@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help='Print {"ok": bool, "errors": [...]}.')
@click.option("--wall", "wall_s", type=float, default=120.0, help="Wall-clock limit (s).")
@click.option("--trusted", is_flag=True, help="Run WITHOUT the sandbox (your own code only).")
def validate(path, as_json, wall_s, trusted):
    """Check a submission folder and dry-run it in the sandbox on synthetic audio."""
    from arena.sandbox import SandboxUnavailable
    from arena.submissions.validate import validate as run_validate

    try:
        report = run_validate(path, wall_s=wall_s, trusted=trusted)
    except SandboxUnavailable as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        _echo_json(report.to_json())
    elif report.ok:
        m = report.manifest
        click.echo(f"ok: {m.name} ({m.track}, entry {m.entry}) passed in {report.seconds:.1f} s")
    else:
        click.echo(f"{path}: {len(report.errors)} problem(s)", err=True)
        for e in report.errors:  # plugin text: shown as text, never as terminal control
            click.echo(f"- {safe_text.terminal(e, multiline=True)}", err=True)
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--replace", is_flag=True, help="Overwrite a submission of the same name.")
@click.option("--max-unpacked-mb", type=int, default=50, show_default=True)
@click.option("--trusted", is_flag=True, help="Validate WITHOUT the sandbox (your own code only).")
def submit(path, replace, max_unpacked_mb, trusted):
    """Install a submission (folder, .zip or .tar.gz) into submissions/<name>/ after validation."""
    from arena.sandbox import SandboxUnavailable
    from arena.submissions.manifest import SubmissionError
    from arena.submissions.submit import submit as run_submit

    try:
        record = run_submit(path, replace=replace, max_unpacked_mb=max_unpacked_mb, trusted=trusted)
    except (SubmissionError, SandboxUnavailable) as e:
        raise click.ClickException(safe_text.terminal(str(e), multiline=True)) from None
    click.echo(f"submitted {record['name']} ({record['track']}), content hash "
               f"{record['content_hash'][:12]}")


# ---------------------------------------------------------------- score
@main.group()
def secret():
    """The organiser's secret scoring split."""


@secret.command("init")
@click.option("--force", is_flag=True, help="Replace an existing secret.")
@click.option("--no-build", is_flag=True, help="Only write the secret.")
def secret_init(force, no_build):
    """Write a new 256-bit secret (owner-only file) and build the secret split from it."""
    from arena.score.subset import create_secret, secret_split

    try:
        path = create_secret(overwrite=force)
    except FileExistsError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"secret written to {path} (mode 600; keep it out of the sandbox and of git)")
    if not no_build:
        manifest, tag = secret_split()
        click.echo(f"secret split {tag}: {len(manifest.read_text().splitlines())} utterances")


def _split_names(value):
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@main.command()
@click.option("--profile", type=click.Choice(["quick", "standard", "full"]), default=None,
              help="quick (default without a GPU: minutes), standard (the board to publish: "
                   "200 utterances, converged reference attack, hours on a CPU) or full "
                   "(default with a GPU).")
@click.option("--split", type=click.Choice(["dev", "test", "secret"]), default=None,
              help="secret: the organiser's split (see `arena secret init`).")
@click.option("--limit", "n_utterances", type=int, default=None, help="Utterances of the split.")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Score on this manifest (corpus JSONL format) instead of a corpus split.")
@click.option("--attacks", default=None, help="Comma-separated attack names (default: all).")
@click.option("--defenses", default=None, help="Comma-separated defense names (default: all).")
@click.option("--models", default=None, help="Comma-separated zoo models (default: all).")
@click.option("--device", default=None)
@click.option("--trusted", is_flag=True, help="Run plugins WITHOUT the sandbox (your own code only).")
@click.option("--store", "store_dir", default=None,
              help="Results folder (default: leaderboard/local/, which reads the published "
                   "board's cells; with --publish: the published board, leaderboard/).")
@click.option("--publish", is_flag=True,
              help="Score the whole grid into the published board (leaderboard/) and rewrite "
                   "its site; refused for a filtered grid.")
@click.option("--workers", type=int, default=None,
              help="Sandbox jobs at once (default: the number of CPU cores; with --cluster: "
                   "as many as the cluster's CPUs, or GPU shares, allow).")
@click.option("--cluster", default=None, metavar="ADDRESS",
              help="Run the jobs on a Ray cluster: its head's host:port, or auto (the cluster "
                   "`ray start` made on this machine). Needs the cluster extra.")
@click.option("--gpus-per-job", type=float, default=0.25, show_default=True,
              help="With --cluster and a CUDA device: the share of one GPU each job asks for.")
@click.option("--json", "as_json", is_flag=True, help="Print the leaderboard as JSON.")
def score(profile, split, n_utterances, manifest, attacks, defenses, models, device, trusted,
          store_dir, publish, workers, cluster, gpus_per_job, as_json):
    """Run every attack against every defense and model; print the leaderboard.

    Without --publish the run is local: its cells and site go to leaderboard/local/ (not
    versioned), reusing the published cells, and the published board is left as it is."""
    from arena.leaderboard import render
    from arena.leaderboard.scoring import ScoreFailed, ScoreRefused, ScoreRequest, score_board
    from arena.score.store import StoreError

    request = ScoreRequest(profile, split, n_utterances, manifest, _split_names(attacks),
                           _split_names(defenses), _split_names(models), device, trusted,
                           store_dir, publish, workers, cluster, gpus_per_job, progress=not as_json)

    def warn(text: str) -> None:
        click.echo(safe_text.terminal(safe_text.redact_paths(text)), err=True)

    try:
        out = score_board(request, warn=warn)
    except ScoreRefused as e:
        raise click.UsageError(str(e)) from None
    except (ScoreFailed, StoreError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        _echo_json({**render.to_json(out.board), "report": out.report.as_meta(),
                    "published": out.published, "filtered": out.filtered,
                    "site": _shown_path(out.site["index"])})
        return
    render.print_terminal(out.board)
    report = out.report
    click.echo(f"{report.computed} cells computed, {report.reused} reused, "
               f"{len(report.failed_jobs)} failed jobs, {report.seconds:.0f} s")
    for failure in report.failed_jobs:
        click.echo(f"  failed: {safe_text.terminal(safe_text.redact_paths(failure))}")
    _site_line(out.site, out.published, out.filtered)


def _shown_path(path) -> str:
    """A path relative to the working folder when it is under it (shorter, and no home)."""
    from pathlib import Path

    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _site_line(site: dict, published: bool, filtered: list[str]) -> None:
    where = _shown_path(site["index"])
    size = f"{site['files']} files, {site['bytes'] / 1e6:.1f} MB, {site['changed']} changed"
    if published:
        click.echo(f"published: {where} ({size})")
    else:
        what = f"filtered ({'; '.join(filtered)})" if filtered else "the whole grid"
        click.echo(f"local run, {what}; not published. Site: {where} ({size}). "
                   "`arena score --publish` updates the published board.")


# ---------------------------------------------------------------- leaderboard
@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "as_csv", is_flag=True)
@click.option("--store", "store_dir", default=None, help="Read this results folder.")
@click.option("--local", is_flag=True, help="The last local run (leaderboard/local/) instead of "
                                            "the published board.")
@click.option("--site", "site_dir", default=None, type=click.Path(file_okay=False),
              help="Write the leaderboard site (static HTML) into this folder.")
@click.option("--publish", is_flag=True,
              help="Rewrite the published board's site (leaderboard/site/) from its store; "
                   "writes only files that change.")
@click.option("--write", "publish_alias", is_flag=True, hidden=True)
def leaderboard(as_json, as_csv, store_dir, local, site_dir, publish, publish_alias):
    """Print the published leaderboard (no scoring); --site DIR writes it as a site."""
    from arena.score.store import StoreError

    try:
        _leaderboard(as_json, as_csv, store_dir, local, site_dir, publish or publish_alias)
    except StoreError as e:
        raise click.ClickException(str(e)) from None


def _leaderboard(as_json, as_csv, store_dir, local, site_dir, publish):
    from pathlib import Path

    from arena.leaderboard import build as lb_build
    from arena.leaderboard import publish as pub
    from arena.leaderboard import render

    if publish and (store_dir or local):
        raise click.UsageError("--publish rewrites the published board from its own store; "
                               "drop --store/--local")
    if local:
        store = pub.local_store()
        if not (store.root / "results.sqlite").is_file():
            raise click.ClickException(f"no local run in {_shown_path(store.root)}; run `arena score`")
        context = pub.local_context(store)
    else:
        root = Path(store_dir) if store_dir else pub.published_root()
        if not (root / "results.sqlite").is_file():
            raise click.ClickException(f"no results in {root}; run `arena score` first")
        store = pub.ReadOnlyStore(root)
        context = None
    if publish:
        result = pub.publish(pub.LayeredStore(store.root, None),
                             site_builder=lambda st, b, ctx: pub.write_store_site(st, b, ctx))
        click.echo(f"published: {_shown_path(result.site['index'])} ({result.site['files']} files, "
                   f"{result.site['bytes'] / 1e6:.1f} MB, {result.site['changed']} changed)")
        return
    board = lb_build.build(store.cells(), store.meta())
    if site_dir:
        if context is None:
            published = not store_dir or pub.same_place(store_dir, pub.published_root())
            context = pub.published_context(store) if published else pub.local_context(store)
        site = pub.write_store_site(store, board, context, out_dir=site_dir)
        click.echo(f"site: {_shown_path(site['index'])} ({site['files']} files, "
                   f"{site['bytes'] / 1e6:.1f} MB)", err=as_json or as_csv)
    if as_json:
        _echo_json(render.to_json(board))
    elif as_csv:
        click.echo(render.to_csv(board), nl=False)
    elif not site_dir:
        if local:
            filtered = store.meta().get("local_run", {}).get("filtered") or []
            click.echo(f"local run in {_shown_path(store.root)}"
                       + (f", filtered: {'; '.join(filtered)}" if filtered else ", the whole grid"))
        elif not store_dir:
            ctx = pub.published_context(store)
            click.echo(f"published board in {_shown_path(store.root)}, {ctx['date']}, "
                       f"commit {ctx['commit']}")
        render.print_terminal(board)


# ---------------------------------------------------------------- bench
@main.group("bench")
def bench_group():
    """Benchmarks (ratios against a baseline measured in the same process)."""


@bench_group.command("convergence")
@click.option("--attack", default="apgd", show_default=True, help="A baseline attack.")
@click.option("--steps", default="25,50,100,200", show_default=True, help="Step counts.")
@click.option("--n", type=int, default=32, show_default=True, help="Dev utterances.")
@click.option("--budget", default="snr30", show_default=True)
@click.option("--model", "model_name", default="dense", show_default=True)
@click.option("--out", default=None, help="Also write the curve (JSON) to this file.")
@click.option("--record", is_flag=True,
              help="Also keep the curve in the published board (leaderboard/), which shows it.")
@click.option("--from-json", "from_json", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Take the curve from this file (an earlier --out) instead of measuring it.")
@click.option("--json", "as_json", is_flag=True)
def bench_convergence_cmd(attack, steps, n, budget, model_name, out, record, from_json, as_json):
    """ΔWER of a reference attack against its step count (is the effort used converged?)."""
    from arena.bench.convergence import convergence

    if from_json:
        curve = json.loads(Path(from_json).read_text())
    else:
        curve = convergence(attack, [int(s) for s in steps.split(",")], n, budget, model_name)
    if out:
        Path(out).write_text(json.dumps(curve, indent=2) + "\n")
    if record:
        from arena.leaderboard.publish import record_convergence

        record_convergence(curve)
    if as_json:
        _echo_json(curve)
        return
    click.echo(f"{attack} on {model_name}, {budget}, {curve['n_utterances']} utterances "
               f"(clean WER {curve['clean_wer']:.3f})")
    for pt in curve["points"]:
        click.echo(f"  {pt['steps']:>5} steps  ΔWER {pt['delta_wer']:.3f} "
                   f"[{pt['ci_low']:.3f}, {pt['ci_high']:.3f}]  {pt['seconds']:.0f} s")
    click.echo(f"converged (within {curve['tolerance']} of 4x the steps) at: {curve['converged_at']}")


@bench_group.command("models")
@click.argument("names", nargs=-1)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--batch", type=int, default=8)
@click.option("--seconds", type=float, default=10.0, help="Audio seconds per utterance.")
@click.option("--repeats", type=int, default=10)
@click.option("--json", "as_json", is_flag=True)
def bench_models_cmd(names, device, batch, seconds, repeats, as_json):
    """Latency and peak memory of zoo models (all by default) vs the dense baseline."""
    from arena.bench.models import bench_models

    rows = bench_models(list(names), device=device, batch=batch, seconds=seconds,
                        repeats=repeats, print_table=not as_json)
    if as_json:
        _echo_json(rows)


@bench_group.command("attacks")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--n", "n", type=int, default=None, help="Dev utterances (default 16 on CPU, 512 on CUDA).")
@click.option("--steps", type=int, default=None, help="PGD steps (default 10 on CPU, 30 on CUDA).")
@click.option("--budget", default="snr30", show_default=True)
@click.option("--model", "model_name", default="dense", show_default=True,
              help="dense (zoo; random weights while the zoo has none), random, or a model file.")
@click.option("--batch-sizes", default=None,
              help="Comma-separated batch sizes tried for each side (default 4,8,16 on CPU, "
                   "16,64,256,512 on CUDA); batch size 1 is always measured for ours.")
@click.option("--no-art", is_flag=True, help="Skip ART.")
@click.option("--mfu", is_flag=True, help="Also measure TFLOP/s of the attack loop (default model "
                                          "and a wav2vec2-base-sized one).")
@click.option("--json", "as_json", is_flag=True)
def bench_attacks_cmd(device, n, steps, budget, model_name, batch_sizes, no_art, mfu, as_json):
    """Our PGD (sandboxed) vs ART's PGD and vs batch size 1: throughput and ΔWER."""
    from arena.bench.attacks import bench_attacks, print_attacks
    from arena.sandbox import SandboxUnavailable

    sizes = [int(s) for s in batch_sizes.split(",") if s.strip()] if batch_sizes else None
    log = (lambda *_: None) if as_json else (lambda m: click.echo(m, err=True))
    try:
        result = bench_attacks(device=device, n=n, steps=steps, budget=budget, model=model_name,
                               batch_sizes=sizes, art=not no_art, log=log)
    except (FileNotFoundError, ValueError, SandboxUnavailable) as e:
        raise click.ClickException(str(e)) from None
    if mfu:
        from arena.bench.mfu import bench_mfu, print_mfu

        result["mfu"] = bench_mfu(device=result["device"], default_model=model_name)
    if as_json:
        _echo_json(result)
        return
    print_attacks(result)
    if mfu:
        print_mfu(result["mfu"])



@bench_group.command("scale")
@click.option("--n", "n", type=int, default=None,
              help="Utterances of the quick profile's split (default: the profile's own, 12).")
@click.option("--entries", default=",".join(("fgsm", "pgd", "none", "lowpass")), show_default=True,
              help="Comma-separated attacks and defenses.")
@click.option("--models", default="dense,int8", show_default=True, help="Comma-separated zoo models.")
@click.option("--keep", default=None, type=click.Path(file_okay=False),
              help="Keep the three stores in this folder (default: a temporary one, removed).")
@click.option("--json", "as_json", is_flag=True)
def bench_scale_cmd(n, entries, models, keep, as_json):
    """One small grid with 1 worker, 2 workers and on a 2-node local Ray cluster: wall times,
    speed-ups, sandbox start-up share, identical cells."""
    from arena.bench.scale import bench_scale, print_scale
    from arena.score.cluster import ClusterError
    from arena.submissions.entries import EntryError

    try:
        result = bench_scale(n, _split_names(entries), _split_names(models), keep=keep)
    except (ClusterError, EntryError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        _echo_json(result)
    else:
        print_scale(result)


if __name__ == "__main__":
    main()
