/* 数据集: a whole file as a job (POST /jobs): classify, augment or evaluate every record, with progress, cancel,
   downloads, and an evaluation's metrics and confusion matrix. The jobs live on the service, so the list
   survives a page reload (GET /jobs: this caller's jobs, newest first). */

import { api, apiFile, toJson } from "../lib/api.js";
import { run } from "../lib/busy.js";
import { $, h, percent, setMessage, t } from "../lib/dom.js";
import { clearErrors, clearFieldError, handleError, showProblems } from "../lib/errors.js";
import { splitLabels } from "../lib/labels.js";
import { readParams } from "../lib/params.js";
import { download } from "../lib/results.js";
import { PARAMS, registerPanel, state } from "../lib/state.js";

const POLL_MS = 1000;
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const AUGMENT = ["num_return_sequences", "max_length", "temperature", "top_k", "top_p", "seed"];
let polling = null;

function task() {
  return $("ds-task").value;
}

function showTaskFields() {
  const kind = task();
  $("ds-labels-field").hidden = kind === "augment";
  $("ds-augment-fields").hidden = kind !== "augment";
  $("ds-label-field-field").hidden = kind !== "evaluate";
  $("ds-labels-hint").dataset.i18n = kind === "evaluate" ? "dataset.labelsHintEvaluate" : "dataset.labelsHint";
  $("ds-labels-hint").textContent = t($("ds-labels-hint").dataset.i18n);
}

function chosenFile() {
  const files = $("ds-file").files;
  return files && files.length ? files[0] : null;
}

function showFileName() {
  const file = chosenFile();
  setMessage($("ds-file-name"), file ? "dataset.fileChosen" : "dataset.noFile", file ? { name: file.name, kb: Math.ceil(file.size / 1024) } : {});
}

function readJobParams(problems) {
  const params = {};
  const kind = task();
  if (kind === "augment") Object.assign(params, readParams("ds", AUGMENT, problems));
  else {
    const labels = splitLabels($("ds-labels").value).filter(Boolean);
    if (labels.length) params.labels = labels;
    else if (kind === "classify") problems.push(["ds-labels", "error.labelsNeeded"]);
  }
  for (const [id, name] of [["ds-text-field", "text_field"], ["ds-id-field", "id_field"], ["ds-label-field", "label_field"]]) {
    const value = $(id).value.trim();
    if (value && (name !== "label_field" || kind === "evaluate")) params[name] = value;
  }
  return params;
}

function submit() {
  clearErrors("dataset");
  const problems = [];
  const file = chosenFile();
  if (!file) problems.push(["ds-file", "dataset.fileNeeded"]);
  const params = readJobParams(problems);
  if (problems.length) return showProblems("dataset", problems);
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("task", task());
  form.append("params", toJson(params));
  return run("dataset", async () => {
    const job = await api("POST", "/jobs", form);
    state.jobs = [job, ...(state.jobs || []).filter((other) => other.id !== job.id)];
    render();
    poll();
  });
}

// ------------------------------------------------------------------ the jobs list
async function refresh() {
  try {
    const data = await api("GET", "/jobs");
    state.jobs = data.jobs || [];
    state.jobsError = null;
  } catch (err) {
    state.jobsError = err;
  }
  render();
  return (state.jobs || []).some((job) => !FINISHED.has(job.status));
}

function poll() {
  if (polling) return;
  const tick = async () => {
    const busy = await refresh();
    polling = busy ? setTimeout(tick, POLL_MS) : null;
  };
  polling = setTimeout(tick, POLL_MS);
}

async function fetchFile(job, which, button) {
  button.disabled = true;
  try {
    const { blob, filename } = await apiFile(`/jobs/${job.id}/${which}`);
    download(filename, blob.type, blob);
  } catch (err) {
    handleError("dataset", err);
  } finally {
    button.disabled = false;
  }
}

async function remove(job) {
  try {
    await api("DELETE", `/jobs/${job.id}`);
  } catch (err) {
    handleError("dataset", err);
  }
  await refresh();
  poll();
}

function progress(job) {
  const share = job.total ? job.done / job.total : 0;
  const bar = h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(share * 100), "data-testid": "job-progress" }, h("div", { class: "progress-fill", style: `width:${(share * 100).toFixed(1)}%` }));
  const parts = [t("dataset.done", { done: job.done, total: job.total, p: Math.round(share * 100) })];
  if (job.records_per_s) parts.push(t("dataset.rate", { r: job.records_per_s.toFixed(1) }));
  if (job.eta_s !== null && job.eta_s !== undefined && !FINISHED.has(job.status)) parts.push(t("dataset.eta", { s: Math.ceil(job.eta_s) }));
  if (job.errors) parts.push(t("dataset.errors", { n: job.errors }));
  if (job.resumed) parts.push(t("dataset.resumed", { n: job.resumed }));
  return [bar, h("p", { class: "job-meta", "data-testid": "job-meta" }, parts.join(" · "))];
}

function metric(name, value) {
  return h("tr", {}, h("th", { scope: "row" }, t(name)), h("td", { "data-metric": name }, value === null || value === undefined ? "–" : percent(value)));
}

// The confusion matrix as a picture: an SVG heat map, rows gold, columns predicted, each cell its count.
function confusionPicture(confusion) {
  const labels = confusion.labels;
  const n = labels.length;
  const cell = 34;
  const pad = 84; // room for the gold labels on the left
  const top = 56; // and for the slanted predicted labels above
  const max = Math.max(1, ...confusion.matrix.flat());
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = pad + n * cell + 4;
  const height = top + n * cell + 4;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.style.maxWidth = `${Math.round(width * 1.3)}px`; // a small matrix is not blown up to the card's width
  svg.setAttribute("class", "confusion");
  svg.setAttribute("role", "img");
  svg.setAttribute("data-testid", "confusion-matrix");
  svg.setAttribute("aria-label", t("dataset.confusion"));
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    svg.append(node);
  };
  labels.forEach((label, i) => {
    const short = label.length > 6 ? `${label.slice(0, 6)}…` : label;
    add("text", { x: pad - 6, y: top + i * cell + cell / 2 + 4, "text-anchor": "end", class: "axis" }, short);
    add("text", { x: pad + i * cell + cell / 2, y: top - 6, "text-anchor": "start", transform: `rotate(-45 ${pad + i * cell + cell / 2} ${top - 6})`, class: "axis" }, short);
    confusion.matrix[i].forEach((count, j) => {
      const x = pad + j * cell;
      const y = top + i * cell;
      const strength = count / max;
      const hue = i === j ? 150 : 5; // the diagonal (right answers) green, the rest red
      add("rect", { x, y, width: cell - 2, height: cell - 2, rx: 3, fill: `hsla(${hue}, 65%, 45%, ${0.08 + 0.85 * strength})`, "data-gold": label, "data-predicted": labels[j], "data-count": count });
      add("text", { x: x + cell / 2 - 1, y: y + cell / 2 + 4, "text-anchor": "middle", class: strength > 0.55 ? "count strong" : "count" }, String(count));
    });
  });
  return svg;
}

function report(job) {
  const r = job.report;
  const summary = h(
    "table",
    { class: "metrics", "data-testid": "job-metrics" },
    h("tbody", {}, metric("dataset.accuracy", r.accuracy), metric("dataset.macroF1", r.macro_f1), metric("dataset.shortAccuracy", r.short_texts && r.short_texts.accuracy), metric("dataset.repeatability", r.repeatability), metric("dataset.misplaced", r.misplaced)),
  );
  const perLabel = h(
    "table",
    { class: "metrics per-label", "data-testid": "job-per-label" },
    h("thead", {}, h("tr", {}, ["dataset.label", "dataset.precision", "dataset.recall", "dataset.f1", "dataset.support"].map((key) => h("th", { scope: "col" }, t(key))))),
    h(
      "tbody",
      {},
      Object.entries(r.per_label).map(([label, s]) => h("tr", {}, h("th", { scope: "row" }, label), h("td", {}, percent(s.precision)), h("td", {}, percent(s.recall)), h("td", {}, percent(s.f1)), h("td", {}, String(s.support)))),
    ),
  );
  const wordings = Object.entries(r.wordings || {}).map(([label, w]) =>
    h("p", { class: "wording", "data-testid": "job-wording" }, t("dataset.bestWording", { label, best: w.best, f1: percent(w.f1[w.best]) })),
  );
  return h("div", { class: "job-report" }, summary, perLabel, h("h4", {}, t("dataset.confusion")), confusionPicture(r.confusion), wordings);
}

function jobCard(job) {
  const actions = [];
  if (!FINISHED.has(job.status)) actions.push(h("button", { type: "button", class: "btn btn-small btn-secondary", "data-testid": "job-cancel", onclick: () => remove(job) }, t("dataset.cancel")));
  if (job.status === "succeeded") {
    const result = h("button", { type: "button", class: "btn btn-small btn-secondary", "data-testid": "job-download" }, t("dataset.downloadResult"));
    result.addEventListener("click", () => fetchFile(job, "result", result));
    actions.push(result);
    const errors = h("button", { type: "button", class: "btn btn-small btn-secondary", "data-testid": "job-download-errors" }, t("dataset.downloadErrors", { n: job.errors }));
    errors.addEventListener("click", () => fetchFile(job, "errors", errors));
    actions.push(errors);
  }
  if (FINISHED.has(job.status)) actions.push(h("button", { type: "button", class: "btn btn-small btn-link", "data-testid": "job-delete", onclick: () => remove(job) }, t("dataset.delete")));
  return h(
    "article",
    { class: `job job-${job.status}`, "data-testid": "job", "data-job-id": job.id, "data-status": job.status },
    h("div", { class: "job-head" }, h("strong", { class: "job-file" }, job.filename), h("span", { class: "job-task" }, t(`dataset.task.${job.task}`)), h("span", { class: `job-status status-${job.status}`, "data-testid": "job-status" }, t(`dataset.status.${job.status}`))),
    progress(job),
    job.detail && job.status !== "succeeded" ? h("p", { class: "job-detail" }, job.detail) : null,
    h("div", { class: "job-actions" }, actions),
    job.report ? report(job) : null,
  );
}

function render() {
  const jobs = state.jobs || [];
  $("ds-empty").hidden = jobs.length > 0;
  $("ds-jobs").replaceChildren(...jobs.map(jobCard));
  const error = $("ds-jobs-error");
  error.hidden = !state.jobsError;
  if (state.jobsError) setMessage(error, "dataset.listFailed", { msg: String(state.jobsError.message || state.jobsError) });
}

function resolveField(field) {
  const name = field.startsWith("params.") ? field.slice("params.".length).split(".")[0] : field;
  if (name === "file") return { id: "ds-file" };
  if (name === "task") return { id: "ds-task" };
  if (name === "labels" || name === "wordings") return { id: "ds-labels" };
  if (name === "text_field") return { id: "ds-text-field" };
  if (name === "id_field") return { id: "ds-id-field" };
  if (name === "label_field") return { id: "ds-label-field" };
  return PARAMS[name] ? { id: `ds-${PARAMS[name].slug}` } : null;
}

function setup() {
  $("ds-task").addEventListener("change", () => {
    clearErrors("dataset");
    showTaskFields();
  });
  $("ds-file").addEventListener("change", () => {
    clearFieldError("ds-file");
    showFileName();
  });
  const zone = $("ds-drop");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer && event.dataTransfer.files.length) {
      $("ds-file").files = event.dataTransfer.files;
      clearFieldError("ds-file");
      showFileName();
    }
  });
  $("ds-labels").addEventListener("input", () => clearFieldError("ds-labels"));
  showTaskFields();
  showFileName();
  refresh().then((busy) => busy && poll());
}

function relabel() {
  showTaskFields();
  showFileName();
  render();
}

function example() {
  $("ds-task").value = "classify";
  $("ds-labels").value = t("dataset.exampleLabels");
  showTaskFields();
}

registerPanel("dataset", { submit, relabel, resolveField, setup, example });
