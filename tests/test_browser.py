"""The widget notebook in a real JupyterLab, driven by a real Chromium (Playwright).

Starts JupyterLab on 127.0.0.1 in a temporary root holding a copy of
notebooks/10_widgets.ipynb (profile smoke), opens it in Debian's /usr/bin/chromium,
runs all cells, drags a component slider, moves the slerp slider, clicks a pixel,
paints a brush stroke, resamples the unedited pixels and shows their conditional variance,
and checks that the images the kernel sends back change (and the stroke stays).
Screenshots of each panel go to outputs/browser/ (git-ignored). Skipped, saying why,
when Chromium or Playwright is missing or Chromium cannot start.
"""
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "10_widgets.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic",
                 "--disable-dev-shm-usage"]  # containers often have a tiny /dev/shm
# smoke by default; e.g. SOSVAE_BROWSER_PROFILE=quick (with SOSVAE_RUNS_DIR holding the trained
# run) to look at screenshots of a model that has learned something
PROFILE = os.environ.get("SOSVAE_BROWSER_PROFILE", "smoke")
SHOTS = REPO / "outputs" / ("browser" if PROFILE == "smoke" else f"browser-{PROFILE}")
SERVER_START_S = 60
NOTEBOOK_RUN_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_chromium() -> None:
    """Install Debian's Chromium for this test when we may (root, apt-get), saying so; else skip, saying why."""
    import shutil
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium); "
                    f"the real-browser test needs it")
    print(f"\nthe browser test needs Chromium at {CHROMIUM}: installing Debian's chromium (apt-get install chromium)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            said = (done.stderr or done.stdout or "").strip().splitlines()
            pytest.skip(f"could not install Chromium ({' '.join(cmd)} failed: {said[-1] if said else 'no output'}); "
                        f"the real-browser test needs it")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"apt-get installed chromium, but not at {CHROMIUM}")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium context with a fresh profile, or a skip that says why."""
    if not Path(CHROMIUM).exists():
        install_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright python package is not installed (pip install playwright)")
    pw = sync_playwright().start()
    try:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1500, "height": 1000},
            timeout=60_000)
    except Exception as err:  # a broken install, missing libraries, no /dev/shm ...
        pw.stop()
        pytest.skip(f"Chromium at {CHROMIUM} could not start: {str(err).splitlines()[0]}")
    yield context
    context.close()
    pw.stop()


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def lab(browser, tmp_path_factory):
    """JupyterLab on a free port with a token; shut down (kernels too) at the end."""
    root = tmp_path_factory.mktemp("lab")
    runs, out = Path(os.environ.get("SOSVAE_RUNS_DIR") or root / "runs"), root / "outputs"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    # the bundled gray faces whatever the data root: the model trained below, in seconds
    params.source += f'\nprofile = {PROFILE!r}\ndataset = "lfw"\noutput_dir = {str(out / "10_widgets")!r}\n'
    nbformat.write(nb, root / NOTEBOOK.name)

    # private config, settings and runtime folders: nothing leaks into ~/.jupyter
    config, settings = root / ".jupyter", root / ".lab-settings"
    write_json(config / "jupyter_lab_config.json", {"LabApp": {
        "expose_app_in_browser": True,  # window.jupyterapp, to run the cells by command
        "news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
        "user_settings_dir": str(settings), "workspaces_dir": str(root / ".workspaces")}})
    # every cell in the DOM (no virtual scrolling), no notification toasts over the widgets
    write_json(settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings",
               {"windowingMode": "none"})
    write_json(settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings",
               {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True})

    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(root / ".runtime"),
               IPYTHONDIR=str(root / ".ipython"), SOSVAE_RUNS_DIR=str(runs),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def shutdown():
        try:  # the server's own shutdown stops its kernels first
            request = urllib.request.Request(f"{url}/api/shutdown", method="POST",
                                             headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(request, timeout=10).close()
            server.wait(timeout=20)
        except Exception:
            pass
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)  # the group we started: server and kernels
                server.wait(timeout=10)
        log.close()

    try:
        # train the smoke model while the server starts; the notebook then only loads it
        from sosvae_core.configs import get_config
        from sosvae_core.runs import get_or_train
        get_or_train(get_config("lfw", PROFILE, "sos"), runs_dir=runs, progress=False)
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n"
                                   f"{(root / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer within {SERVER_START_S} s:\n"
                                       f"{(root / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
    except BaseException:
        shutdown()
        raise
    yield {"url": url, "token": token, "root": root}
    shutdown()


def src(page, selector: str) -> str:
    return page.eval_on_selector(selector, "e => e.src")


def wait_src_change(page, selector: str, before: str, timeout_ms: int = 20_000) -> str:
    page.wait_for_function("([sel, old]) => { const e = document.querySelector(sel); "
                           "return e && e.src && e.src !== old; }", arg=[selector, before],
                           timeout=timeout_ms)
    return src(page, selector)


def pixels(png: bytes):
    from PIL import Image
    import numpy as np
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_widgets_in_jupyterlab(lab, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page()
    page.set_default_timeout(30_000)
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        page.goto(f"{lab['url']}/lab/tree/10_widgets.ipynb?token={lab['token']}",
                  wait_until="domcontentloaded", timeout=60_000)
        # the notebook is open and its kernel is up
        page.wait_for_function(
            "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
            " const s = w && w.sessionContext && w.sessionContext.session;"
            " return !!(s && s.kernel && s.kernel.connectionStatus === 'connected'"
            " && w.sessionContext.kernelDisplayStatus === 'idle'); }", timeout=90_000)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        # the last cell prints where it wrote the latencies: everything ran (or a cell failed)
        page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-OutputArea-output')].some("
            "e => e.innerText.includes('written to') || e.innerText.includes('Traceback'))",
            timeout=NOTEBOOK_RUN_S * 1000)
        failed = page.locator(".jp-OutputArea-output", has_text="Traceback")
        assert failed.count() == 0, f"a notebook cell failed:\n{failed.first.inner_text()[-3000:]}"
        for panel in ("component", "slerp", "latent", "edit"):
            page.wait_for_selector(f".sosvae-{panel}-panel img", state="visible")
        page.screenshot(path=SHOTS / "00_notebook.png")

        # 1. drag the first component slider to its right end
        comp_img = ".sosvae-component-image"
        page.locator(comp_img).scroll_into_view_if_needed()
        before_png = page.locator(comp_img).screenshot(path=SHOTS / "component_before.png")
        before = src(page, comp_img)
        handle = page.locator(".sosvae-component-panel .noUi-handle").first
        box = handle.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 300, y, steps=12)
        page.mouse.up()
        wait_src_change(page, comp_img, before)
        page.wait_for_timeout(500)  # let the last tick of the drag arrive
        readout = page.locator(".sosvae-component-panel .widget-readout").first.inner_text()
        assert float(readout) > 1.0, readout
        after_png = page.locator(comp_img).screenshot(path=SHOTS / "component_after.png")
        assert (pixels(before_png) != pixels(after_png)).any(), "the component image did not change"
        page.locator(".sosvae-component-panel").screenshot(path=SHOTS / "01_component_panel.png")

        # 2. slerp: move tx with the keyboard
        slerp_img = ".sosvae-slerp-image"
        before = src(page, slerp_img)
        tx = page.locator(".sosvae-slerp-panel .noUi-handle").first
        tx.focus()
        for _ in range(20):
            tx.press("ArrowRight")
        wait_src_change(page, slerp_img, before)
        page.locator(".sosvae-slerp-panel").screenshot(path=SHOTS / "02_slerp_panel.png")

        # 3. latent: click a pixel near the top left of the mean
        mean_img, cov_img = ".sosvae-latent-mean", ".sosvae-latent-covariance"
        page.locator(mean_img).scroll_into_view_if_needed()
        before = src(page, cov_img)
        box = page.locator(mean_img).bounding_box()
        page.mouse.click(box["x"] + 0.25 * box["width"], box["y"] + 0.3 * box["height"])
        wait_src_change(page, cov_img, before)
        page.locator(".sosvae-latent-panel").screenshot(path=SHOTS / "03_latent_panel.png")

        # 4. edit: one brush stroke across the face
        edit_in, edit_out = ".sosvae-edit-input", ".sosvae-edit-result"
        page.locator(edit_in).scroll_into_view_if_needed()
        before_png = page.locator(edit_out).screenshot(path=SHOTS / "edit_before.png")
        before_input = page.locator(edit_in).screenshot()
        before = src(page, edit_out)
        box = page.locator(edit_in).bounding_box()
        x0, y0 = box["x"] + 0.2 * box["width"], box["y"] + 0.45 * box["height"]
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x0 + 0.6 * box["width"], y0 + 0.1 * box["height"], steps=15)
        page.mouse.up()
        wait_src_change(page, edit_out, before)
        after_png = page.locator(edit_out).screenshot(path=SHOTS / "edit_after.png")
        assert (pixels(before_png) != pixels(after_png)).any(), "the conditional mean did not change"
        # the paint lands where the mouse went: rows 0.45–0.55 of the image, none near the top
        painted = (pixels(before_input) != pixels(page.locator(edit_in).screenshot())).any(-1)
        rows = painted.any(1).nonzero()[0] / painted.shape[0]
        assert painted.any() and rows.min() > 0.3 and rows.max() < 0.7, (rows.min(), rows.max())
        status = page.locator(".sosvae-edit-panel").inner_text()
        assert "strokes: 1" in status, status
        page.locator(".sosvae-edit-panel").screenshot(path=SHOTS / "04_edit_panel.png")

        # 5. "resample the rest": a conditional sample replaces the mean, the stroke stays
        input_png = page.locator(edit_in).screenshot()
        before = src(page, edit_out)
        page.locator(".sosvae-edit-resample").click()
        wait_src_change(page, edit_out, before)
        page.wait_for_timeout(300)
        sampled_png = page.locator(edit_out).screenshot(path=SHOTS / "edit_resampled.png")
        assert (pixels(input_png) == pixels(page.locator(edit_in).screenshot())).all(), "the edit input changed"
        mean_px, sample_px = pixels(after_png), pixels(sampled_png)
        assert (mean_px[~painted] != sample_px[~painted]).any(), "resampling did not change the unedited pixels"
        stroke = painted.copy()  # the stroke's inner pixels (its anti-aliased rim aside) keep their colour
        stroke[1:-1] &= painted[:-2] & painted[2:]
        stroke[:, 1:-1] &= painted[:, :-2] & painted[:, 2:]
        assert stroke.any() and abs(mean_px[stroke] - sample_px[stroke]).max() <= 2, "the stroke did not stay"
        assert "a conditional sample" in page.locator(".sosvae-edit-panel").inner_text()
        assert "strokes: 1" in page.locator(".sosvae-edit-panel").inner_text()

        # 6. the conditional variance appears beside it
        assert not page.locator(".sosvae-edit-variance").is_visible()
        page.locator(".sosvae-edit-variance-toggle").click()
        page.wait_for_selector(".sosvae-edit-variance", state="visible")
        page.wait_for_function("() => { const e = document.querySelector('.sosvae-edit-variance');"
                               " return e && e.naturalWidth > 0; }")
        page.locator(".sosvae-edit-panel").screenshot(path=SHOTS / "06_edit_resampled_variance.png")
        page.screenshot(path=SHOTS / "05_after_interaction.png")  # the viewport: Lab scrolls inside
        assert not errors, errors
    finally:
        page.close()


def test_results_page_in_chromium(browser, tmp_path):
    """index.html of a run: every image loads, the scorecard and Table 1 are there, links resolve."""
    from PIL import Image

    from sosvae_core import claims, scorecard
    from sosvae_core.report import build_index
    out = tmp_path / "outputs"
    for book, pngs in {"02_fig1_fig2_structured_uncertainty": ["fig1_celeba", "fig2_celeba"],
                       "07_appA_unstabilised": ["fig8_unstabilised"]}.items():
        (out / book).mkdir(parents=True)
        for i, name in enumerate(pngs):
            Image.new("RGB", (40 + i, 30), (200, 30 * i, 90)).save(out / book / f"{name}.png")
        (out / f"{book}.ipynb").write_text("{}")
    rows = [claims.row(2, "celeba", {"pixel_variance": 0.04}, "0.0322"),
            claims.row(9, "celeba", {"ratio": 3.1}, "11.76 against 0.0322")]
    scorecard.save_scorecard(rows, out / "scorecard.json", profile="quick")
    write_json(out / "08_table1_fid" / "metrics.json", {"table1": [
        {"dataset": "celeba", "model": "sos", "n": 250, "n_reference": 2000, "fid_means": 251.0,
         "fid_samples": 240.5, "paper_means": 132.93, "paper_samples": 104.62}]})
    write_json(out / "summary.json", {"profile": "quick", "device": "cpu", "notebooks": [
        {"notebook": "02_fig1_fig2_structured_uncertainty.ipynb", "wall_time_s": 12.0},
        {"notebook": "07_appA_unstabilised.ipynb", "wall_time_s": 3.0}]})
    page = browser.new_page()
    try:
        page.goto(build_index(out).as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate("[...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        assert sorted(src for src, _, _ in images) == sorted(
            f"{p.parent.name}/{p.name}" for p in out.glob("*/*.png"))
        assert all(done and width > 0 for _, done, width in images), images
        text = page.inner_text("body")
        assert "1 of 2 measured claims pass" in text and "104.62" in text and "Paper, Fig. 8" in text
        links = page.evaluate("[...document.querySelectorAll('a')].map(a => a.getAttribute('href'))")
        assert sorted(links) == ["02_fig1_fig2_structured_uncertainty.ipynb", "07_appA_unstabilised.ipynb"]
        assert all((out / href).exists() for href in links)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "results_page.png"), full_page=True)
    finally:
        page.close()
