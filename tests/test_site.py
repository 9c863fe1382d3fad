"""The published board and its site, end to end on the tiny world of test_score_run (real
espeak audio, real tiny models, real baselines, real SQLite store):

- a publish that computes nothing, a local run and a refused filtered publish leave every
  byte of the published board as it was (what keeps `git status` clean on a clone);
- the site, opened in Debian's Chromium (headless, driven over the DevTools protocol on a
  pipe: no port, no extra package): every page loads without a console error, every local
  link, image and audio source resolves, a column header click sorts its table, an audio
  element loads; it opens from file:// as well as over HTTP; no absolute path of this
  machine appears in any of its files.

Screenshots of the index and of a submission page go to $ARENA_SCREENSHOTS when it is set
(e.g. docs/img), else to the test's tmp folder.
"""
import base64
import contextlib
import fcntl
import functools
import hashlib
import http.server
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from arena.core import paths
from tests.test_score_run import world  # noqa: F401  (the fixture)

ATTACKS, DEFENSES, MODELS = ("noop",), ("none",), ("dense",)   # the real run: small and fast


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is not installed: `apt-get install -y chromium` (.ci/run installs it)")


# ------------------------------------------------------------------ a real published board
def _tree_hashes(root: Path) -> dict[str, str]:
    """Every file of a published board except what git ignores there (the local store, the
    audio artifacts, SQLite's journal files)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(("local/", "artifacts/")) \
                and not rel.endswith(("-wal", "-shm")):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _env(the_world, **extra) -> dict:
    return {**os.environ, **{k: v for k, v in the_world.items() if k.startswith("ARENA_")}, **extra}


def _publish_run(the_world, board_dir: Path) -> tuple:
    """`arena score --publish` as the CLI does it, on the world's grid (the CLI refuses
    --manifest for publishing, and the world has only a 4-utterance manifest)."""
    from arena.leaderboard import publish as pub
    from arena.leaderboard.site import subset_clean
    from arena.score.profiles import get_profile
    from arena.score.run import ScoreOptions, run_score, target_specs
    from arena.score.subset import load_subset
    from arena.submissions.entries import discover

    with pytest.MonkeyPatch.context() as mp:
        for k, v in the_world.items():
            if k.startswith("ARENA_"):
                mp.setenv(k, v)
        mp.setenv("ARENA_LEADERBOARD", str(board_dir))
        entries, problems = discover()
        entries = [e for e in entries if e.name in ATTACKS + DEFENSES]
        profile = get_profile("quick")
        subset = load_subset(profile, manifest=the_world["MANIFEST"], progress=False)
        store = pub.publishing_store(board_dir)
        report = run_score(store, ScoreOptions(profile, trusted=True, progress=False), entries,
                           target_specs(list(MODELS)), subset, problems=problems)
        clean = subset_clean(subset)
        result = pub.publish(store, store.pending_meta.get("last_run"), commit="test",
                             site_builder=lambda st, b, ctx: pub.write_store_site(st, b, ctx, clean=clean))
    return report, result


@pytest.mark.slow
def test_publishing_again_local_runs_and_refused_publishes_change_nothing(world, tmp_path):  # noqa: F811
    board = tmp_path / "leaderboard"
    report, first = _publish_run(world, board)
    assert report.failed_jobs == [] and report.computed > 0 and first.history_added
    before = _tree_hashes(board)
    assert "results.sqlite" in before and "site/index.html" in before

    report, again = _publish_run(world, board)        # nothing new: not a byte changes
    assert report.computed == 0 and not again.meta_changed and not again.history_added
    assert again.site["changed"] == 0
    assert _tree_hashes(board) == before

    env = _env(world, ARENA_LEADERBOARD=str(board))
    local = subprocess.run([sys.executable, "-m", "arena.cli", "score", "--manifest", world["MANIFEST"],
                            "--trusted", "--attacks", ",".join(ATTACKS), "--defenses",
                            ",".join(DEFENSES), "--models", ",".join(MODELS), "--json"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    out = json.loads(local.stdout)
    assert out["report"]["computed"] == 0          # the published cells, read through
    assert out["published"] is False and any("--manifest" in f for f in out["filtered"])
    assert _tree_hashes(board) == before
    page = (board / "local" / "site" / "index.html").read_text()
    assert "Local run, not the published board" in page and "Filtered: --attacks noop" in page

    refused = subprocess.run([sys.executable, "-m", "arena.cli", "score", "--publish", "--models",
                              "dense"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert "filtered" in refused.stderr and "--models dense" in refused.stderr
    assert _tree_hashes(board) == before

    site = subprocess.run([sys.executable, "-m", "arena.cli", "leaderboard", "--publish"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert site.returncode == 0 and "0 changed" in site.stdout, site.stdout + site.stderr
    assert _tree_hashes(board) == before


# ------------------------------------------------------------------ a hand-made board
HOSTILE = "<script>console.error('injected')</script> boom"


def _handmade_store(root: Path, the_world) -> tuple:
    """A results store written through its own API: the world's 4 real utterances, two
    models, two untargeted and one targeted attack at two budgets (with their audio), two
    defenses, transfer; a failing cell whose error names this machine's paths and carries
    markup. Returns (store, clean audio by id)."""
    import numpy as np

    from arena.asr.metrics import edit_counts
    from arena.data.manifest import load_audio, read_manifest
    from arena.score.store import ResultsStore
    from arena.score.targets import choose_target

    utts = read_manifest(Path(the_world["MANIFEST"]))
    ids, refs = [u.id for u in utts], {u.id: u.text for u in utts}
    clean = {u.id: (u.text, load_audio(u)) for u in utts}
    store = ResultsStore(root)
    axes = dict(split="dev", seed_tag="t", profile="quick")
    rng = np.random.default_rng(0)
    budgets, models = ("snr30", "linf0.003"), ("dense", "int8")
    attacks = {"noop": "attack", "fgsm": "attack", "cw": "targeted-attack"}

    def said(text: str, damage: float) -> str:
        words = text.split()
        return " ".join(w if rng.random() > damage else "uh" for w in words)

    def metrics(hyps: dict, targeted: bool = False) -> dict:
        m: dict = dict(ids=[], word_edits=[], words=[], char_edits=[], chars=[], hypotheses=[])
        for uid, hyp in hyps.items():
            we, wn = edit_counts(refs[uid], hyp, "word")
            ce, cn = edit_counts(refs[uid], hyp, "char")
            for k, v in zip(m, (uid, we, wn, ce, cn, hyp)):
                m[k].append(v)
        if targeted:
            targets = {u: choose_target(refs[u], u) for u in hyps}
            m["target_exact"] = [hyps[u] == targets[u] for u in hyps]
            m["target_char_edits"] = [edit_counts(targets[u], hyps[u], "char")[0] for u in hyps]
            m["target_chars"] = [len(targets[u]) for u in hyps]
        return m

    n = 0
    for model in models:
        for defense in ("none", "lowpass"):
            store.put(f"clean-{model}-{defense}", "clean",
                      metrics({u: said(refs[u], 0.05 if defense == "none" else 0.2) for u in ids}),
                      defense=defense, model=model, **axes)
        for attack, track in attacks.items():
            for b, budget in enumerate(budgets):
                n += 1
                key = f"attack-{attack}-{budget}-{model}"
                scale = 0.0 if attack == "noop" else 0.01 * (b + 1)
                waves = {u: np.clip(clean[u][1] + scale * rng.standard_normal(len(clean[u][1])), -1, 1)
                         .astype(np.float32) for u in ids}
                import torch

                artifact = store.write_waves(key, {u: torch.from_numpy(w) for u, w in waves.items()})
                error = (f'Traceback: File "{paths.PACKAGE}/sandbox/worker.py", line 3\n'
                         f"  {tempfile.gettempdir()}/arena-job-ab_12/x {HOSTILE}") \
                    if (attack, budget, model) == ("fgsm", "linf0.003", "int8") else None
                store.put(key, "attack", dict(ids=ids, snr_db=[30.0] * len(ids), mean_snr_db=30.0,
                                              forward_calls=40 * n, backward_calls=20 * n,
                                              counts_self_reported=True, n=len(ids), track=track),
                          error=error, artifact=artifact, attack=attack, budget=budget, model=model,
                          **axes)
                damage = {"noop": 0.05, "fgsm": 0.4, "cw": 0.5}[attack]
                for defense in ("none", "lowpass"):
                    hyps = {u: (choose_target(refs[u], u) if track != "attack" and i == 0
                                else said(refs[u], damage / (2 if defense == "lowpass" else 1)))
                            for i, u in enumerate(ids)}
                    m = metrics(hyps, targeted=track != "attack")
                    m.update(track=track, mean_snr_db=30.0, attack_error=error)
                    store.put(f"defense-{attack}-{budget}-{model}-{defense}", "defense", m,
                              attack=attack, budget=budget, defense=defense, model=model, **axes)
                if model != "dense" and track == "attack":
                    m = metrics({u: said(refs[u], damage * 0.6) for u in ids})
                    m.pop("hypotheses")
                    store.put(f"transfer-{attack}-{budget}-{model}", "transfer", {**m, "track": track},
                              attack=attack, budget=budget, model=model, source_model="dense", **axes)
    store.set_meta("last_run", dict(
        profile="quick", split="dev", seed_tag="t", n_utterances=len(ids), budgets=list(budgets),
        device="cpu", models=list(models), entries=[*attacks, "none", "lowpass"],
        problems=[f"{paths.ROOT}/submissions/broken: manifest field 'track' <b>sideways</b>"]))
    return store, clean


@pytest.fixture(scope="module")
def handmade(world, tmp_path_factory):  # noqa: F811
    """The hand-made board published twice (a changed cell between: two history entries)."""
    from arena.leaderboard import publish as pub

    root = tmp_path_factory.mktemp("handmade") / "leaderboard"
    store, clean = _handmade_store(root, world)

    def site(st, board, ctx):
        return pub.write_store_site(st, board, ctx, clean=clean, models={})

    pub.publish(store, commit="first", site_builder=site)
    time.sleep(0.01)
    cell = store.get("defense-fgsm-snr30-dense-none")
    m = dict(cell["metrics"], word_edits=[w + 2 for w in cell["metrics"]["word_edits"]])
    keep = ("attack", "budget", "defense", "model", "split", "seed_tag", "profile")
    store.put("defense-fgsm-snr30-dense-none-v2", "defense", m, **{k: cell[k] for k in keep})
    result = pub.publish(store, commit="second", site_builder=site)
    assert result.history_added
    return dict(dir=root, site=root / "site", result=result)


# ------------------------------------------------------------------ the site's files
class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for attr in ("href", "src"):
            if a.get(attr):
                self.refs.append((tag, a[attr]))


def _local_refs(site: Path):
    """(page, reference, target path or None for an external one) for every href/src."""
    for page in sorted(site.rglob("*.html")):
        parser = _Refs()
        parser.feed(page.read_text())
        for _tag, ref in parser.refs:
            url = urlsplit(ref)
            if url.scheme in ("data",):
                continue
            if url.scheme or url.netloc or ref.startswith("/"):
                yield page, ref, None
                continue
            yield page, ref, (page.parent / unquote(url.path)).resolve() if url.path else page


@pytest.mark.slow
def test_site_files_are_complete_relative_and_free_of_host_paths(handmade):
    site = handmade["site"]
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    assert set(pages) == {"index.html", "listen/index.html", "s/noop.html", "s/fgsm.html", "s/cw.html",
                          "s/none.html", "s/lowpass.html", "m/dense.html", "m/int8.html"}, pages
    for page, ref, target in _local_refs(site):
        assert target is not None, f"{page.name}: external reference {ref}"
        assert target.is_file(), f"{page.relative_to(site)}: {ref} does not resolve"
        assert site.resolve() in target.parents or target == site.resolve(), f"{ref} leaves the site"
    index = (site / "index.html").read_text()
    for words in ("regressed", "self-reported", "Profile", "Commit", "quick", "snr30"):
        assert words in index, words
    listen = (site / "listen" / "index.html").read_text()
    # 3 utterances: clean, then 3 attacks x 2 budgets
    assert listen.count("<audio") == 3 + 3 * 2 * 3 and listen.count("<del>") > 3
    assert listen.count("target:") == 2 * 3
    # noop's audio is the clean audio: one file each (named by the samples' hash)
    assert len(list((site / "listen").glob("*.ogg"))) == 3 + 2 * 2 * 3
    assert len(list((site / "listen").glob("*.png"))) == 2 * 2 * 3   # noop has no perturbation
    fgsm = (site / "s" / "fgsm.html").read_text()
    assert "&lt;script&gt;" in fgsm and "<script>console" not in fgsm and "&lt;arena&gt;/sandbox" in fgsm
    assert "self-reported" in fgsm
    assert "<code>first</code>" in fgsm and "<code>second</code>" in fgsm     # rank history
    _assert_no_host_paths(site, handmade["dir"])


def _assert_no_host_paths(site: Path, *more: Path) -> None:
    """No absolute path of this machine in any file of the site (text or binary)."""
    needles = {str(Path.home()), str(paths.ROOT), str(paths.PACKAGE), tempfile.gettempdir(),
               "/work/", "/root/", "/tmp/", "/home/", *map(str, more)}
    for f in site.rglob("*"):
        if f.is_file():
            blob = f.read_bytes()
            for needle in needles:
                if needle and needle != "/":
                    assert needle.encode() not in blob, f"{f.relative_to(site)} holds {needle}"


# ------------------------------------------------------------------ a browser
def _above(fd: int, low: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, low)
    os.close(fd)
    return moved


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    JSON messages separated by NUL bytes on file descriptors 3 and 4)."""

    def __init__(self, profile_dir: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child's ends move above 3 and 4 first: `3<&4 4>&3` would cross the wires
        to_browser_r, from_browser_w = (_above(fd, 10) for fd in (to_browser_r, from_browser_w))
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--disable-background-networking", "--disable-component-update",
                "--allow-file-access-from-files", "--hide-scrollbars",
                f"--user-data-dir={profile_dir}", "--remote-debugging-pipe", "about:blank"]
        # bash puts the pipes on the descriptors Chromium reads (3) and writes (4) (dash takes
        # one-digit descriptors only)
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', _chromium(), *args],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next = 0
        self._replies: dict[int, queue.Queue] = {}
        self.events: list[dict] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1,
                  mobile=False)

    def _read(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    self._replies.setdefault(msg["id"], queue.Queue()).put(msg)
                else:
                    with self._lock:
                        self.events.append(msg)

    def send(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        box = self._replies.setdefault(self._next, queue.Queue())
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        reply = box.get(timeout=timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def call(self, method: str, **params) -> dict:
        return self.send(method, self.session, **params)

    def evaluate(self, expression: str, timeout: float = 30):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True, timeout=timeout)
        if "exceptionDetails" in res:
            raise AssertionError(f"{expression[:80]}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, url: str, timeout: float = 30) -> list[str]:
        """Load a page; the console errors, uncaught exceptions and failed loads it caused."""
        with self._lock:
            self.events.clear()
        self.call("Page.navigate", url=url)
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                if any(ev.get("method") == "Page.loadEventFired" for ev in self.events):
                    break
            time.sleep(0.05)
        else:
            raise AssertionError(f"{url} did not finish loading in {timeout} s")
        self.evaluate("new Promise(r => setTimeout(r, 150))")   # late errors (deferred scripts)
        errors = []
        with self._lock:
            for ev in self.events:
                p = ev.get("params", {})
                if ev.get("method") == "Runtime.exceptionThrown":
                    errors.append(f"exception: {p['exceptionDetails'].get('text')}")
                elif ev.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                    errors.append(f"console: {[a.get('value') for a in p.get('args', [])]}")
                elif ev.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                    errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return errors

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass


@contextlib.contextmanager
def _serve(folder: Path):
    """A folder over HTTP on 127.0.0.1 (as `python -m http.server` serves it)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served(handmade):
    with _serve(handmade["site"]) as url:
        yield url


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def browser(tmp_path):
    b = Chromium(tmp_path / "chromium-profile")
    yield b
    b.close()


CHECK_PAGE = """(async () => {
  const bad = [];
  for (const img of document.images) {
    if (!img.complete) await new Promise(r => { img.onload = img.onerror = r; });
    if (!img.naturalWidth) bad.push('image ' + img.getAttribute('src'));
  }
  const here = new URL(location.href);
  for (const a of document.querySelectorAll('a[href]')) {
    const u = new URL(a.getAttribute('href'), here);
    if (u.origin !== here.origin) { bad.push('external link ' + u.href); continue; }
    const r = await fetch(u.href, {method: 'HEAD'});
    if (!r.ok) bad.push('link ' + a.getAttribute('href') + ' ' + r.status);
    if (u.hash && u.pathname === here.pathname && !document.getElementById(u.hash.slice(1)))
      bad.push('anchor ' + u.hash);
  }
  for (const s of document.querySelectorAll('audio[src], script[src], link[rel=stylesheet]')) {
    const src = s.getAttribute('src') || s.getAttribute('href');
    const r = await fetch(new URL(src, here).href, {method: 'HEAD'});
    if (!r.ok) bad.push('source ' + src + ' ' + r.status);
  }
  return bad;
})()"""


AUDIO_DURATION = """new Promise((resolve, reject) => {
  const a = document.querySelector('audio');
  if (a.readyState >= 1) return resolve(a.duration);
  a.addEventListener('loadedmetadata', () => resolve(a.duration));
  a.addEventListener('error', () => reject(new Error('audio error ' + a.error.code)));
  a.load();
})"""


@pytest.mark.slow
def test_site_in_chromium(handmade, served, browser, tmp_path):
    site = handmade["site"]
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    for page in pages:
        errors = browser.open(f"{served}/{page}")
        assert errors == [], f"{page}: {errors}"
        assert browser.evaluate(CHECK_PAGE) == [], page

    # a click on a column header sorts the table: the defenses by clean WER, both ways
    assert browser.open(f"{served}/index.html") == []
    column = browser.evaluate("""(() => {
      const t = document.querySelector('#defenses + p + div > table.sortable');
      return [...t.tHead.rows[0].cells].findIndex(th => th.textContent === 'clean wer');
    })()""")
    assert column > 0
    values = f"""[...document.querySelector('#defenses + p + div > table.sortable').tBodies[0].rows]
                 .map(r => Number(r.cells[{column}].dataset.v))"""
    box = browser.evaluate(f"""(() => {{
      const th = document.querySelector('#defenses + p + div > table.sortable').tHead.rows[0].cells[{column}];
      th.scrollIntoView(); const b = th.getBoundingClientRect();
      return [b.left + b.width / 2, b.top + b.height / 2];
    }})()""")
    browser.click(*box)
    ascending = browser.evaluate(values)
    assert ascending == sorted(ascending) and len(set(ascending)) == 2   # none, lowpass
    browser.click(*box)
    descending = browser.evaluate(values)
    assert descending == sorted(ascending, reverse=True)

    # an audio element loads (its duration is known)
    assert browser.open(f"{served}/listen/index.html") == []
    duration = browser.evaluate(AUDIO_DURATION)
    assert duration > 0.3, duration

    # from file:// too (no server): pages, images and audio
    errors = browser.open((site / "index.html").as_uri())
    assert errors == [], errors
    assert browser.evaluate("[...document.images].every(i => i.naturalWidth > 0)")
    assert browser.open((site / "listen" / "index.html").as_uri()) == []
    assert browser.evaluate(AUDIO_DURATION) > 0.3

    shots = Path(os.environ.get("ARENA_SCREENSHOTS") or tmp_path / "screenshots")
    browser.open(f"{served}/index.html")
    browser.screenshot(shots / "site-index.png")
    browser.open(f"{served}/s/fgsm.html")
    browser.screenshot(shots / "site-submission.png")
    assert (shots / "site-index.png").stat().st_size > 10_000


@pytest.mark.slow
def test_the_checkouts_published_site_in_chromium(browser, tmp_path):
    """The site committed in leaderboard/site/ (made by `arena leaderboard --publish`)."""
    root = paths.checkout_root()
    site = root / "leaderboard" / "site" if root else None
    if site is None or not (site / "index.html").is_file():
        pytest.skip("no published site in this checkout: `arena leaderboard --publish` makes it")
    _assert_no_host_paths(site)
    with _serve(site) as url:
        for page in sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")):
            assert browser.open(f"{url}/{page}") == [], page
            assert browser.evaluate(CHECK_PAGE) == [], page
        shots = Path(os.environ.get("ARENA_SCREENSHOTS") or tmp_path / "screenshots")
        browser.open(f"{url}/index.html")
        browser.screenshot(shots / "leaderboard-index.png")
        first = browser.evaluate("document.querySelector('#attacks + p + div a').getAttribute('href')")
        browser.open(f"{url}/{first}")
        browser.screenshot(shots / "leaderboard-submission.png")
