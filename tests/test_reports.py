"""HTML reports: every entry point writes one self-contained file; user strings are escaped; the
figures render in headless Chromium without JavaScript errors, hover works on the roofline, and a
screenshot of each report is saved."""

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from xpusim import __version__
from xpusim.cli import main

SIM = ["simulate", "--model", "llama-3-8b", "--phase", "decode", "--batch", "8", "--context", "4096"]


def run(*args):
    try:
        return main(list(args))
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Every report type, written once for the module: name -> (path, expected figure count)."""
    d = tmp_path_factory.mktemp("reports")
    out = {}
    assert run(*SIM, "--arch", "h100-sxm", "--report", str(d / "sim.html"), "--save", str(d / "sim.json"),
               "--trace", str(d / "trace.json"), "--quiet") == 0
    out["simulate"] = (d / "sim.html", 4)
    assert run(*SIM, "--arch", "h100-sxm", "a100-80gb", "mi300x", "--report", str(d / "cmp.html"), "--quiet") == 0
    out["compare"] = (d / "cmp.html", 1 + 3 * 3 + 1)
    assert run("op", "gemm", "--m", "2048", "--n", "4096", "--k", "4096", "--arch", "a100-80gb", "--report",
               str(d / "op.html"), "--save", str(d / "op.json")) == 0
    out["op"] = (d / "op.html", 2)
    assert run("validate", "--report", str(d / "val.html"), "--save", str(d / "val.json"), "--quiet") == 0
    out["validate"] = (d / "val.html", 1)
    assert run("explore", "--space", "npu", "--trials", "24", "--storage", f"sqlite:///{d}/s.db", "--sampler", "random",
               "--report", str(d / "exp.html"), "--save", str(d / "exp.json"), "--quiet") == 0
    out["explore"] = (d / "exp.html", 4)
    assert run("serve", "--system", "dgx-h100", "--model", "llama-3-8b", "--tp", "2", "--rate", "5", "--requests", "200",
               "--scheduler", "chunked", "--report", str(d / "serve.html"), "--quiet") == 0
    out["serve"] = (d / "serve.html", 2)
    assert run("simulate", "--system", "dgx-a100", "--model", "llama-3-70b", "--tp", "4", "--pp", "2", "--phase", "prefill",
               "--batch", "8", "--seq", "1024", "--report", str(d / "system.html"), "--quiet") == 0
    out["system"] = (d / "system.html", 4)
    assert run("report", str(d / "sim.json"), "-o", str(d / "from_saved.html")) == 0
    out["from_saved"] = (d / "from_saved.html", 4)
    return out


def test_self_contained_with_header(reports):
    for name, (path, figures) in reports.items():
        text = path.read_text()
        head, _, tail = text.partition("<script>")
        bundle, _, rest = tail.partition("</script>")
        assert "Plotly" in bundle and len(bundle) > 1_000_000, name  # plotly.js inlined
        page = head + rest  # everything but the library: no external script, stylesheet or URL fetched
        assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page), name
        assert "http://" not in page and "https://" not in page, name
        assert f"<td>{__version__}</td>" in text and "xpusim" in text
        assert len(re.findall(r'<div class="figure" id=', text)) == figures, name
    assert "h100-sxm, a100-80gb, mi300x" in reports["compare"][0].read_text()


def test_saved_result_gives_the_same_report(reports):
    a = reports["simulate"][0].read_text()
    b = reports["from_saved"][0].read_text()
    strip = lambda t: re.sub(r"<tr><td><b>command</b>.*?</tr>", "", t)  # noqa: E731
    assert strip(a) == strip(b)


def test_chrome_trace(reports):
    trace = json.loads((reports["simulate"][0].parent / "trace.json").read_text())
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(events) > 32 * 10  # every op of every layer
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in events)
    ends = sorted((e["ts"], e["ts"] + e["dur"]) for e in events)
    assert all(b[0] >= a[1] - 1e-6 for a, b in zip(ends, ends[1:], strict=False))  # sequential, no overlap


def test_user_strings_are_escaped(tmp_path):
    bad = '<script>alert("x")</script>'
    cfg = json.loads(Path(__file__).parents[1].joinpath("workloads/models/llama-3-8b.json").read_text())
    model = tmp_path / "m.json"
    model.write_text(json.dumps(cfg))
    name_dir = tmp_path / bad.replace("/", "_")
    name_dir.mkdir()
    cfg_path = name_dir / "config.json"  # the model takes its folder's name
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path / "r.html"
    assert run("simulate", "--arch", "h100-sxm", "--model", str(cfg_path), "--phase", "decode", "--context", "64",
               "--report", str(out), "--quiet") == 0
    text = out.read_text()
    assert '<script>alert("x")' not in text and "&lt;script&gt;alert" in text


CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser_missing() -> str:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        return "no Chromium: apt-get install chromium chromium-driver (.ci/run installs them)"
    return ""


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield drv
    drv.quit()


RENDERED = """
return Array.from(document.querySelectorAll('div.figure')).map(function (d) {
  var svg = d.querySelector('svg.main-svg');
  var marks = d.querySelectorAll('.scatterlayer .point, .barlayer .point, .scatterlayer .js-line, .parcoords .dimension, '
                                 + '.scatter3d, canvas, .barlayer path').length;
  return {id: d.id, plotted: d.classList.contains('js-plotly-plot'), svg: !!svg, marks: marks};
});
"""


def _wait_rendered(browser, timeout_s: float = 30.0):
    """The figures' state once every one has drawn its marks (plotly may finish after load)."""
    end = time.time() + timeout_s
    while True:
        figs = browser.execute_script(RENDERED)
        if (figs and all(f["plotted"] and f["marks"] > 0 for f in figs)) or time.time() > end:
            return figs
        time.sleep(0.2)


@pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "ok")
def test_reports_render_in_chromium(reports, browser, tmp_path_factory):
    from selenium.webdriver.common.by import By

    env = os.environ.get("XPUSIM_SCREENSHOTS")  # keep them somewhere to look at
    shots = Path(env) if env else tmp_path_factory.mktemp("screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    for name, (path, figures) in reports.items():
        browser.get_log("browser")  # forget the previous page's messages
        browser.get(path.as_uri())
        figs = _wait_rendered(browser)
        assert len(figs) == figures, name
        for f in figs:
            assert f["plotted"] and f["svg"] and f["marks"] > 0, (name, f)
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, (name, errors)
        browser.save_screenshot(str(shots / f"{name}.png"))
        for i, fig in enumerate(browser.find_elements(By.CSS_SELECTOR, "div.figure")[:4]):  # the first figures, whole
            browser.execute_script("arguments[0].scrollIntoView(); window.dispatchEvent(new Event('resize'));", fig)
            time.sleep(0.3)
            fig.screenshot(str(shots / f"{name}-fig{i}.png"))
        assert (shots / f"{name}.png").stat().st_size > 10_000


@pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "ok")
def test_roofline_hover_names_the_op(reports, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(reports["simulate"][0].as_uri())
    _wait_rendered(browser)
    points = browser.find_elements(By.CSS_SELECTOR, "#roofline0 .scatterlayer .point")
    assert points
    ActionChains(browser).move_to_element(points[len(points) // 2]).perform()
    hover = browser.execute_script("var h=document.querySelector('#roofline0 .hoverlayer'); return h ? h.textContent : '';")
    ops = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "attention", "lm_head", "attn_norm",
           "mlp_norm", "rope_q", "rope_k", "act", "residual_attn", "residual_mlp", "final_norm", "embed"}
    assert any(op in hover for op in ops), hover
    assert "FLOP" in hover and "bound" in hover


def test_a_system_runs_breakdown_says_it_shows_one_device():
    """The breakdown of a --system run shows one device's ops per micro-batch while the printed totals
    count every device (21.5 ms / 1.41 J drawn against 32.3 ms / 11.2 J printed, unlabelled)."""
    from xpusim.reports.sim_figures import breakdown
    from xpusim.sim.events import simulate_system
    from xpusim.sim.parallel import Plan
    from xpusim.workloads import Decode

    r = simulate_system("dgx-h100", "llama-3-8b", Decode(8, 1024), Plan(tp=2, pp=2))
    assert "one device's ops" in breakdown(r).layout.title.text
