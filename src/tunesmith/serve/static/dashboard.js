// tunesmith serve dashboard: plain JS over the /v1 endpoints, with the key typed into the page.
// No build step and no libraries: the plots are SVG drawn here.
"use strict";

const KEY_STORAGE = "tunesmith.apiKey";
const POLL_MS = 2000;
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const SHOWN_EVENTS = 200;
const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = { train_loss: "#1f6feb", valid_loss: "#d97706", kl_to_base: "#9333ea" };

const state = {
  key: null,
  jobs: [],
  jobsJson: "",
  selected: null,
  detailStatus: null, // the selected job's status when its detail was last loaded
  events: new Map(), // job id -> events, newest first
  reportFor: null,
  chat: [],
  timer: null,
  ticking: false,
};

const $ = (id) => document.getElementById(id);

// ---- the API ---------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function errorMessage(response) {
  const raw = await response.text();
  try {
    const message = JSON.parse(raw).error.message;
    if (message) return message;
  } catch {
    // not OpenAI's error body: show what came back
  }
  return `${response.status} ${response.statusText}: ${raw.slice(0, 300)}`;
}

async function api(path, { method = "GET", json, form, text = false } = {}) {
  const headers = { Authorization: `Bearer ${state.key}` };
  let body = form;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(new URL("v1" + path, document.baseURI), { method, headers, body });
  } catch (e) {
    throw new ApiError(0, `cannot reach the server: ${e.message}`);
  }
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  return text ? response.text() : response.json();
}

// ---- small DOM helpers -----------------------------------------------------------------------------
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "");
const number = (value) => (typeof value === "number" ? value.toFixed(4) : "");

function showError(error) {
  $("error-text").textContent = error.status ? `Error ${error.status}: ${error.message}` : `Error: ${error.message}`;
  $("error").hidden = false;
}

function hideError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

// Runs an event handler; whatever it throws is shown on the page.
function guarded(handler) {
  return async (event) => {
    try {
      await handler(event);
    } catch (e) {
      showError(e);
    }
  };
}

// ---- log in and out --------------------------------------------------------------------------------
async function logIn(key) {
  state.key = key;
  try {
    await loadModels(); // any authenticated call checks the key
  } catch (e) {
    state.key = null;
    throw e;
  }
  localStorage.setItem(KEY_STORAGE, key);
  hideError();
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  $("whoami").textContent = `key ${key.slice(0, 8)}…`;
  await refreshJobs();
  startPolling();
}

function logOut() {
  localStorage.removeItem(KEY_STORAGE);
  stopPolling();
  Object.assign(state, { key: null, jobs: [], jobsJson: "", selected: null, detailStatus: null, reportFor: null });
  state.events.clear();
  state.chat = [];
  for (const id of ["jobs-body", "events", "checkpoints-body", "plot-loss", "plot-kl", "chat-log"]) {
    $(id).replaceChildren();
  }
  $("job-detail").hidden = true;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("whoami").textContent = "";
  $("api-key").value = "";
}

// ---- models ----------------------------------------------------------------------------------------
function fillSelect(select, names) {
  const current = select.value;
  select.replaceChildren(...names.map((name) => el("option", { value: name }, name)));
  if (names.includes(current)) select.value = current;
}

async function loadModels() {
  const models = (await api("/models")).data.map((m) => m.id);
  fillSelect($("create-model"), models.filter((name) => !name.startsWith("ft:")));
  fillSelect($("chat-model"), models);
}

// ---- the jobs list ---------------------------------------------------------------------------------
function statusBadge(status, testid) {
  return el("span", { class: `status status-${status}`, "data-testid": testid }, status);
}

function actionButton(job, action, enabled) {
  return el(
    "button",
    {
      type: "button",
      disabled: !enabled,
      "data-action": action,
      "data-testid": `${action}-${job.id}`,
      onclick: guarded(async (event) => {
        event.stopPropagation();
        await api(`/fine_tuning/jobs/${job.id}/${action}`, { method: "POST" });
        await refreshJobs();
        startPolling();
      }),
    },
    action,
  );
}

function jobRow(job) {
  const actions = el(
    "td",
    { class: "actions" },
    actionButton(job, "cancel", !FINISHED.has(job.status)),
    actionButton(job, "pause", ["queued", "running"].includes(job.status)),
    actionButton(job, "resume", job.status === "paused"),
  );
  return el(
    "tr",
    {
      class: job.id === state.selected ? "selected" : null,
      "data-testid": "job-row",
      dataset: { jobId: job.id, status: job.status },
      onclick: guarded(() => selectJob(job.id)),
    },
    el("td", {}, el("code", {}, job.id)),
    el("td", {}, job.model),
    el("td", {}, job.method.type),
    el("td", {}, statusBadge(job.status, "job-status")),
    el("td", {}, el("code", {}, job.fine_tuned_model || "")),
    el("td", {}, when(job.created_at)),
    actions,
  );
}

function renderJobs() {
  $("jobs-body").replaceChildren(...state.jobs.map(jobRow));
  $("jobs-empty").hidden = state.jobs.length > 0;
}

async function refreshJobs() {
  const jobs = (await api("/fine_tuning/jobs?limit=100")).data;
  const json = JSON.stringify(jobs);
  if (json !== state.jobsJson) {
    const before = new Map(state.jobs.map((j) => [j.id, j.status]));
    state.jobs = jobs;
    state.jobsJson = json;
    renderJobs(); // only when something changed: a rebuilt row would swallow a click in progress
    if (jobs.some((j) => j.status === "succeeded" && before.get(j.id) !== "succeeded")) await loadModels();
  }
  const selected = jobs.find((j) => j.id === state.selected);
  if (selected && (!FINISHED.has(selected.status) || selected.status !== state.detailStatus)) {
    await refreshDetail(selected);
  }
}

function startPolling() {
  stopPolling();
  state.timer = setInterval(tick, POLL_MS);
}

function stopPolling() {
  clearInterval(state.timer);
  state.timer = null;
}

// Every POLL_MS while a job is not finished; quiet once all are (the Refresh button looks again).
async function tick() {
  if (state.ticking || !state.key) return;
  if (state.jobs.every((j) => FINISHED.has(j.status))) return stopPolling();
  state.ticking = true;
  try {
    await refreshJobs();
  } catch (e) {
    showError(e);
  } finally {
    state.ticking = false;
  }
}

// ---- one job: plots, events, checkpoints, report ---------------------------------------------------
async function selectJob(id) {
  if (state.selected === id) return;
  state.selected = id;
  state.detailStatus = null;
  state.reportFor = null;
  $("report").hidden = true;
  renderJobs();
  const job = state.jobs.find((j) => j.id === id) || (await api(`/fine_tuning/jobs/${id}`));
  await refreshDetail(job);
}

async function refreshDetail(job) {
  $("job-detail").hidden = false;
  $("detail-id").textContent = job.id;
  $("detail-status").replaceChildren(statusBadge(job.status, "detail-status-badge"));
  $("detail-error").hidden = !job.error;
  $("detail-error").textContent = job.error ? job.error.message : "";
  await loadNewEvents(job.id);
  if (state.selected !== job.id) return; // another job was selected meanwhile
  renderEvents(state.events.get(job.id));
  renderPlots(state.events.get(job.id));
  await loadCheckpoints(job.id);
  await loadReport(job);
  state.detailStatus = job.status;
}

// Events come newest first: page back only until one already known.
async function loadNewEvents(id) {
  const known = state.events.get(id) || [];
  const seen = new Set(known.map((e) => e.id));
  const fresh = [];
  let after = "";
  for (;;) {
    const page = await api(`/fine_tuning/jobs/${id}/events?limit=100${after}`);
    const unseen = page.data.filter((e) => !seen.has(e.id));
    fresh.push(...unseen);
    if (!page.has_more || unseen.length < page.data.length) break;
    after = `&after=${encodeURIComponent(page.last_id)}`;
  }
  state.events.set(id, fresh.concat(known));
}

function renderEvents(events) {
  const items = events.slice(0, SHOWN_EVENTS).map((e) =>
    el(
      "li",
      { class: `event level-${e.level}`, "data-testid": "event", dataset: { type: e.type } },
      el("time", {}, when(e.created_at)),
      el("span", { class: e.message.includes("\n") ? "message table" : "message" }, e.message),
    ),
  );
  if (events.length > SHOWN_EVENTS) items.push(el("li", { class: "hint" }, `… ${events.length - SHOWN_EVENTS} older`));
  $("events").replaceChildren(...items);
}

// The metrics events' data, one row per step in step order. A step can log twice (training, then the final
// evaluation; or again after a resume): merged, the later value of a key wins.
function metricsByStep(events) {
  const rows = new Map();
  for (const e of [...events].reverse()) {
    if (e.type === "metrics" && typeof e.data.step === "number") {
      rows.set(e.data.step, { ...rows.get(e.data.step), ...e.data });
    }
  }
  return [...rows.values()].sort((a, b) => a.step - b.step);
}

function seriesOf(rows, key) {
  return { name: key, points: rows.filter((r) => typeof r[key] === "number").map((r) => [r.step, r[key]]) };
}

function renderPlots(events) {
  const rows = metricsByStep(events);
  lineChart($("plot-loss"), [seriesOf(rows, "train_loss"), seriesOf(rows, "valid_loss")], "no loss logged yet");
  lineChart($("plot-kl"), [seriesOf(rows, "kl_to_base")], "no KL measured (set “measure forgetting every”)");
}

// The axis range: 5% beyond the values, never below 0 when none is (a loss or KL is not negative).
function extent(values) {
  const [low, high] = [Math.min(...values), Math.max(...values)];
  const pad = low === high ? Math.abs(low) * 0.1 || 1 : (high - low) * 0.05;
  return [low >= 0 ? Math.max(low - pad, 0) : low - pad, high + pad];
}

// Round values 1, 2 or 5 x 10^k apart, about `count` of them between low and high; and their decimals.
function niceTicks(low, high, count) {
  const raw = (high - low) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].find((m) => m * magnitude >= raw) * magnitude;
  const values = [];
  for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) values.push(v);
  return { values, decimals: Math.max(0, -Math.floor(Math.log10(step))) };
}

// One line per series over steps, drawn into an SVG with a 480 x 220 viewBox.
function lineChart(root, series, emptyText) {
  const [width, height] = [480, 220];
  const margin = { left: 64, right: 12, top: 24, bottom: 30 };
  root.replaceChildren();
  const drawn = series.filter((s) => s.points.length);
  if (!drawn.length) {
    root.append(svg("text", { x: width / 2, y: height / 2, class: "empty", "text-anchor": "middle" }, emptyText));
    return;
  }
  const points = drawn.flatMap((s) => s.points);
  const [x0, x1] = extent(points.map((p) => p[0]));
  const [y0, y1] = extent(points.map((p) => p[1]));
  const x = (step) => margin.left + ((step - x0) / (x1 - x0)) * (width - margin.left - margin.right);
  const y = (value) => height - margin.bottom - ((value - y0) / (y1 - y0)) * (height - margin.top - margin.bottom);

  const yTicks = niceTicks(y0, y1, 6);
  for (const value of yTicks.values) {
    root.append(svg("line", { x1: margin.left, x2: width - margin.right, y1: y(value), y2: y(value), class: "grid" }));
    const label = value.toFixed(yTicks.decimals);
    root.append(svg("text", { x: margin.left - 6, y: y(value) + 4, "text-anchor": "end" }, label));
  }
  const xTicks = niceTicks(x0, x1, 8);
  for (const step of xTicks.values.filter(Number.isInteger)) {
    root.append(svg("text", { x: x(step), y: height - margin.bottom + 16, "text-anchor": "middle" }, String(step)));
  }
  root.append(svg("text", { x: width - margin.right, y: height - 2, "text-anchor": "end" }, "step"));

  drawn.forEach((s, i) => {
    const color = COLORS[s.name] || "#333";
    const coords = s.points.map(([step, value]) => `${x(step).toFixed(1)},${y(value).toFixed(1)}`).join(" ");
    const attrs = { points: coords, stroke: color, class: "series", "data-series": s.name };
    root.append(svg("polyline", { ...attrs, "data-points": s.points.length }));
    for (const [step, value] of s.points.length <= 60 ? s.points : []) {
      root.append(svg("circle", { cx: x(step), cy: y(value), r: 2.5, fill: color }));
    }
    root.append(svg("text", { x: margin.left + 8 + i * 110, y: 14, fill: color, class: "legend" }, s.name));
  });
}

async function loadCheckpoints(id) {
  const checkpoints = (await api(`/fine_tuning/jobs/${id}/checkpoints?limit=100`)).data;
  if (state.selected !== id) return;
  const rows = checkpoints.map((c) =>
    el(
      "tr",
      { "data-testid": "checkpoint", dataset: { step: c.step_number } },
      el("td", {}, String(c.step_number)),
      el("td", {}, el("code", {}, c.fine_tuned_model_checkpoint)),
      el("td", {}, number(c.metrics.train_loss)),
      el("td", {}, number(c.metrics.kl_to_base)),
    ),
  );
  $("checkpoints-body").replaceChildren(...rows);
}

async function loadReport(job) {
  if (!FINISHED.has(job.status)) {
    $("report-status").textContent = "The run writes its report when it finishes.";
    $("report").hidden = true;
    return;
  }
  if (state.reportFor === job.id) return;
  try {
    const page = await api(`/fine_tuning/jobs/${job.id}/report`, { text: true });
    $("report").srcdoc = page; // sandboxed: the report's HTML runs nothing
    $("report").hidden = false;
    $("report-status").textContent = "";
  } catch (e) {
    if (e.status !== 404) throw e;
    $("report").hidden = true;
    $("report-status").textContent = e.message; // a failed or cancelled run may have none
  }
  state.reportFor = job.id;
}

// ---- a new job: upload, then create ----------------------------------------------------------------
function numberField(id, parse) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : parse(raw);
}

function jobRequest(fileId, validationId) {
  const kind = $("create-method").value;
  const hyperparameters = {
    n_epochs: numberField("create-epochs", (v) => parseInt(v, 10)),
    learning_rate_multiplier: numberField("create-lr", parseFloat),
  };
  const tunesmith = {
    method: $("create-adapter").value,
    max_steps: numberField("create-max-steps", (v) => parseInt(v, 10)),
    save_every: numberField("create-save-every", (v) => parseInt(v, 10)),
    forgetting_every: numberField("create-forgetting-every", (v) => parseInt(v, 10)),
  };
  const body = {
    model: $("create-model").value,
    training_file: fileId,
    validation_file: validationId,
    method: { type: kind, [kind]: { hyperparameters } },
    tunesmith,
  };
  const suffix = $("create-suffix").value.trim();
  if (suffix) body.suffix = suffix;
  return body; // JSON.stringify drops the fields left undefined ("auto")
}

async function uploadFile(file) {
  const status = $("create-status");
  status.textContent = `Uploading ${file.name} …`;
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  const uploaded = await api("/files", { method: "POST", form });
  status.textContent = `Uploaded ${uploaded.filename} as ${uploaded.id}.`;
  return uploaded.id;
}

async function createJob(event) {
  event.preventDefault();
  const status = $("create-status");
  const button = $("create-button");
  button.disabled = true;
  try {
    const training = await uploadFile($("create-file").files[0]);
    const validation = $("create-validation-file").files[0];
    const validationId = validation ? await uploadFile(validation) : undefined;
    status.textContent = "Creating the job …";
    const job = await api("/fine_tuning/jobs", { method: "POST", json: jobRequest(training, validationId) });
    status.textContent = `Created ${job.id}.`;
    await refreshJobs();
    await selectJob(job.id);
    startPolling();
  } catch (e) {
    status.textContent = "";
    throw e;
  } finally {
    button.disabled = false;
  }
}

// ---- chat ------------------------------------------------------------------------------------------
function renderChat() {
  const items = state.chat.map((m) =>
    el(
      "li",
      { class: `chat-${m.role}`, "data-testid": "chat-message", dataset: { role: m.role } },
      el("b", {}, `${m.role}${m.model ? ` (${m.model})` : ""}: `),
      m.content || "(empty reply)",
      m.finish ? el("span", { class: "hint" }, ` [${m.finish}]`) : null,
    ),
  );
  $("chat-log").replaceChildren(...items);
}

async function sendChat(event) {
  event.preventDefault();
  const input = $("chat-input");
  const content = input.value.trim();
  if (!content) return;
  const model = $("chat-model").value;
  state.chat.push({ role: "user", content });
  input.value = "";
  renderChat();
  $("chat-send").disabled = true;
  try {
    const reply = await api("/chat/completions", {
      method: "POST",
      json: {
        model,
        messages: state.chat.map(({ role, content }) => ({ role, content })),
        max_tokens: numberField("chat-max-tokens", (v) => parseInt(v, 10)),
      },
    });
    const choice = reply.choices[0];
    state.chat.push({ role: "assistant", content: choice.message.content || "", model, finish: choice.finish_reason });
  } catch (e) {
    state.chat.pop(); // not answered: give the message back to edit and resend
    input.value = content;
    throw e;
  } finally {
    $("chat-send").disabled = false;
    renderChat();
  }
}

// ---- wiring ----------------------------------------------------------------------------------------
function wire() {
  $("login-form").addEventListener(
    "submit",
    guarded((event) => {
      event.preventDefault();
      return logIn($("api-key").value.trim());
    }),
  );
  $("logout").addEventListener("click", logOut);
  $("error-close").addEventListener("click", hideError);
  $("refresh").addEventListener(
    "click",
    guarded(async () => {
      await loadModels();
      await refreshJobs();
      startPolling();
    }),
  );
  $("create-form").addEventListener("submit", guarded(createJob));
  $("chat-form").addEventListener("submit", guarded(sendChat));
  $("chat-clear").addEventListener("click", () => {
    state.chat = [];
    renderChat();
  });
}

async function start() {
  wire();
  const saved = localStorage.getItem(KEY_STORAGE);
  if (!saved) return;
  try {
    await logIn(saved);
  } catch (e) {
    if (e.status === 401) localStorage.removeItem(KEY_STORAGE);
    showError(e);
  }
}

document.addEventListener("DOMContentLoaded", start);
