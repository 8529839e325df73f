"""The dashboard at `GET /`, driven in a real headless Chromium against a real server with two workers:
log in, upload and create a job through the form, watch it succeed with its plots, events, checkpoints and
report, chat with the fine-tune, and pause, resume and cancel a job with the page's buttons."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import KEYS, tiny_job, upload, wait_for

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is missing: run scripts/install-test-deps (apt-get install -y chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason='playwright is missing: pip install -e ".[test]"')
expect = sync_api.expect

JOB_S = 180_000  # ms: a tiny job on a shared two-core machine, its model loads included


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        # never `playwright install`: the system's browser, so nothing is downloaded
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url.removesuffix("/v1") + "/")
    yield page
    context.close()
    assert not errors, errors  # a script error is a failure even when the clicks went through


def log_in(page, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#login-button")


def job_status(page, job_id: str):
    return page.locator(f'tr[data-job-id="{job_id}"] [data-testid="job-status"]')


def test_a_wrong_key_shows_the_401_message(page):
    log_in(page, "sk-wrong")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-text")).to_contain_text("401: Incorrect API key provided.")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("localStorage.getItem('tunesmith.apiKey')") is None


def test_create_watch_and_chat_with_a_job(page, server, data_dir):
    log_in(page, KEYS["alice"])
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()

    page.set_input_files("#create-file", data_dir / "train.jsonl")
    page.set_input_files("#create-validation-file", data_dir / "valid.jsonl")
    page.select_option("#create-model", "tiny-random-llama")
    page.select_option("#create-method", "supervised")
    page.fill("#create-suffix", "dash")
    page.fill("#create-max-steps", "4")
    page.fill("#create-save-every", "2")
    page.fill("#create-forgetting-every", "2")
    page.click("#create-button")
    expect(page.locator("#create-status")).to_contain_text("Created ftjob-")
    job_id = re.search(r"ftjob-\S+?(?=\.?$)", page.locator("#create-status").inner_text()).group(0)
    expect(page.locator("#detail-id")).to_have_text(job_id)  # the new job is opened once the list has refreshed
    expect(job_status(page, job_id)).to_have_text("succeeded", timeout=JOB_S)
    expect(page.locator("#detail-status")).to_have_text("succeeded")

    job = server.client().fine_tuning.jobs.retrieve(job_id)  # what the form sent reached the API
    assert job.method.type == "supervised" and job.user_provided_suffix == "dash"
    for stored, sent in ((job.training_file, "train.jsonl"), (job.validation_file, "valid.jsonl")):
        assert (server.home / "files" / stored).read_bytes() == (data_dir / sent).read_bytes()

    # the plots: one vertex per logged step (the final evaluation's row at step 4 does not hide its training
    # loss); the validation loss once, at the end; KL measured every 2 steps
    train_loss = page.locator('#plot-loss polyline[data-series="train_loss"]')
    expect(train_loss).to_have_attribute("data-points", "4")
    assert len(train_loss.get_attribute("points").split()) == 4
    expect(page.locator('#plot-loss polyline[data-series="valid_loss"]')).to_have_attribute("data-points", "1")
    kl = page.locator('#plot-kl polyline[data-series="kl_to_base"]')
    expect(kl).to_have_attribute("data-points", re.compile(r"^[2-9]$"))

    events = page.locator('[data-testid="event"]')
    expect(events.first).to_contain_text("The job has successfully completed")
    assert page.locator('[data-testid="event"][data-type="metrics"]').count() >= 4
    checkpoints = page.locator('[data-testid="checkpoint"]')
    expect(checkpoints).to_have_count(2)
    assert sorted(int(s) for s in checkpoints.evaluate_all("rows => rows.map(r => r.dataset.step)")) == [2, 4]
    expect(checkpoints.first).to_contain_text(f"{job.fine_tuned_model}:ckpt-step-4")

    # the report, its plots inlined
    report = page.frame_locator("#report")
    expect(report.locator("h2").first).to_have_text("start and end", timeout=10_000)
    expect(report.locator("table")).to_contain_text("kl_to_base")
    assert report.locator('img[src^="data:image/png;base64,"]').count() >= 2
    mine = server.http("GET", f"/fine_tuning/jobs/{job_id}/report")
    assert mine.status_code == 200 and mine.headers["content-type"].startswith("text/html")
    theirs = server.http("GET", f"/fine_tuning/jobs/{job_id}/report", owner="bob")
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
    assert server.http("GET", f"/fine_tuning/jobs/{job_id}/report", owner=None).status_code == 401

    # chat with the fine-tune, picked from GET /v1/models
    page.select_option("#chat-model", job.fine_tuned_model)
    page.fill("#chat-max-tokens", "8")
    page.fill("#chat-input", "alpha beta gamma")
    page.click("#chat-send")
    reply = page.locator('[data-testid="chat-message"][data-role="assistant"]')
    expect(reply).to_have_count(1, timeout=120_000)
    expect(reply).to_contain_text(job.fine_tuned_model)
    expect(page.locator('[data-testid="chat-message"][data-role="user"]')).to_have_text("user: alpha beta gamma")
    expect(page.locator("#error")).to_be_hidden()

    # the key survives a reload; log out forgets it
    page.reload()
    expect(job_status(page, job_id)).to_have_text("succeeded")
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("localStorage.getItem('tunesmith.apiKey')") is None


def test_pause_resume_and_cancel_buttons(page, server, data_dir):
    client = server.client()
    job = tiny_job(client, upload(client, data_dir / "train.jsonl"), steps=400, save_every=1)
    log_in(page, KEYS["alice"])
    wait_for(client, job.id, {"running"}, check=lambda j: client.fine_tuning.jobs.checkpoints.list(j.id).data)

    page.click(f'[data-testid="pause-{job.id}"]')
    expect(job_status(page, job.id)).to_have_text("paused", timeout=60_000)
    expect(page.locator(f'[data-testid="pause-{job.id}"]')).to_be_disabled()
    page.click(f'[data-testid="resume-{job.id}"]')
    expect(job_status(page, job.id)).to_have_text(re.compile("queued|running"), timeout=10_000)
    page.click(f'[data-testid="cancel-{job.id}"]')
    expect(job_status(page, job.id)).to_have_text("cancelled", timeout=60_000)
    expect(page.locator(f'[data-testid="cancel-{job.id}"]')).to_be_disabled()
    expect(page.locator("#error")).to_be_hidden()


def test_a_job_without_a_report_answers_404(server, data_dir):
    client = server.client()
    failed = tiny_job(client, upload(client, data_dir / "bad.jsonl"))
    wait_for(client, failed.id, {"failed"}, timeout=60)
    none = server.http("GET", f"/fine_tuning/jobs/{failed.id}/report")
    assert none.status_code == 404 and none.json()["error"]["code"] == "report_not_found"
    assert "no report yet" in none.json()["error"]["message"]


def test_the_page_and_its_assets_need_no_key(server):
    root = server.url.removesuffix("/v1")
    page = httpx.get(root + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset, kind in (("static/dashboard.js", "javascript"), ("static/dashboard.css", "text/css")):
        assert f'"{asset}"' in page.text
        response = httpx.get(f"{root}/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
