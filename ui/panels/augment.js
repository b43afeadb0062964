/* 单条增强: one text, its paraphrases, and the keep-the-label checks. */

import { api } from "../lib/api.js";
import { run } from "../lib/busy.js";
import { $, h, percent, seconds, setMessage, t } from "../lib/dom.js";
import { clearErrors, clearFieldError, showProblems } from "../lib/errors.js";
import { splitLabels } from "../lib/labels.js";
import { readNumber, readParams } from "../lib/params.js";
import { copyButton, metaLine, resultItem, truncatedBadge } from "../lib/results.js";
import { PARAMS, SAMPLING, registerPanel, state } from "../lib/state.js";

const KEEP_INPUTS = ["aug-keep-labels", "aug-keep-label-name", "aug-min-distance", "aug-max-candidates"];

// The "keep the label" switch shows its fields; switched off, their errors go and nothing of them is sent.
function syncKeepLabel() {
  const on = $("aug-keep-label").checked;
  $("aug-keep-fields").hidden = !on;
  $("aug-keep-label").setAttribute("aria-expanded", on ? "true" : "false");
  if (!on) for (const id of ["aug-keep-label", ...KEEP_INPUTS]) clearFieldError(id);
}

function setup() {
  $("aug-keep-label").addEventListener("change", () => {
    clearFieldError("aug-keep-label");
    syncKeepLabel();
  });
  for (const id of KEEP_INPUTS) $(id).addEventListener("input", () => clearFieldError(id));
  // the label must be among the labels: changing the labels may settle the label's error too
  $("aug-keep-labels").addEventListener("input", () => clearFieldError("aug-keep-label-name"));
  $("aug-text").addEventListener("input", () => clearFieldError("aug-text"));
  syncKeepLabel();
}

// keep_label, min_distance and max_candidates, only while the switch is on (off: the request is as before).
function readChecks(problems) {
  if (!$("aug-keep-label").checked) return {};
  const labels = [];
  for (const label of splitLabels($("aug-keep-labels").value)) if (label && !labels.includes(label)) labels.push(label);
  if (labels.length < 2) problems.push(["aug-keep-labels", "classify.needLabels"]);
  const keep = { labels };
  const label = $("aug-keep-label-name").value.trim();
  if (label) keep.label = label; // empty: the text's own top label
  const checks = { keep_label: keep };
  const minDistance = readNumber("aug-min-distance", problems);
  if (minDistance !== undefined) checks.min_distance = minDistance;
  const maxCandidates = readNumber("aug-max-candidates", problems);
  if (maxCandidates !== undefined) checks.max_candidates = maxCandidates;
  return checks;
}

function submit() {
  clearErrors("augment");
  const text = $("aug-text").value.trim();
  const problems = [];
  if (!text) problems.push(["aug-text", "error.required"]);
  const params = readParams("aug", ["num_return_sequences", ...SAMPLING], problems);
  const checks = readChecks(problems);
  if (problems.length) return showProblems("augment", problems);
  return run("augment", async () => {
    const started = performance.now();
    const data = await api("POST", "/augment", { text, ...params, ...checks });
    state.augment = {
      texts: data.augmented_texts || [],
      truncated: !!data.truncated,
      label: typeof data.label === "string" ? data.label : null,
      labelScores: Array.isArray(data.label_scores) ? data.label_scores : null,
      candidates: data.candidates || null,
      ms: performance.now() - started,
    };
    render();
  });
}

function augmentItem(text, label, score) {
  if (typeof score !== "number") return resultItem(text, "aug-result");
  return h(
    "li",
    { class: "result-item", "data-testid": "aug-result" },
    h(
      "div",
      { class: "result-body" },
      h("span", { class: "result-text" }, text),
      h(
        "span",
        { class: "label-score", "data-testid": "aug-label-score", "data-label": label, "data-score": score, title: t("augment.labelScoreTitle", { label }) },
        h("span", { class: "label-score-name" }, label),
        " ",
        h("span", { class: "label-score-value" }, percent(score)),
      ),
    ),
    copyButton(text),
  );
}

function render() {
  const result = state.augment;
  const list = $("aug-results");
  if (!result) return;
  $("aug-empty").hidden = true;
  const scores = result.labelScores;
  list.replaceChildren(...result.texts.map((text, index) => augmentItem(text, result.label, scores ? scores[index] : undefined)));
  const counts = result.candidates;
  if (!result.texts.length) list.append(h("li", { class: "result-none" }, t(counts ? "augment.noneKept" : "common.noResults")));
  let kept = null;
  if (counts) {
    const params = { label: result.label, kept: counts.kept, tried: counts.tried };
    kept = h(
      "span",
      {
        class: "kept-meta",
        "data-testid": "aug-kept-meta",
        "data-label": result.label,
        "data-asked": counts.asked,
        "data-tried": counts.tried,
        "data-kept": counts.kept,
        "data-max-candidates": counts.max_candidates,
        title: t("augment.counts", counts),
      },
      t(result.label !== null ? "augment.kept" : "augment.keptNoLabel", params),
    );
  }
  metaLine($("aug-meta"), [
    kept || t("augment.count", { n: result.texts.length }),
    t("common.elapsed", { s: seconds(result.ms) }),
    result.truncated && truncatedBadge(),
  ]);
  const note = $("aug-shortfall");
  if (counts && counts.kept < counts.asked) setMessage(note, "augment.shortfall", { ...counts, max: counts.max_candidates });
  else setMessage(note, null);
  note.hidden = !(counts && counts.kept < counts.asked);
}

// The input element a 422's `field` (a dotted path in the request body) belongs to.
function resolveField(field) {
  const [root, sub, index] = field.split(".");
  if (root === "text") return { id: "aug-text" };
  if (root === "keep_label") {
    if (sub === "labels") {
      if (index !== undefined && /^\d+$/.test(index)) return { id: "aug-keep-labels", key: "error.label", params: { n: Number(index) + 1 } };
      return { id: "aug-keep-labels" };
    }
    if (sub === "label") return { id: "aug-keep-label-name" };
    return { id: "aug-keep-label" };
  }
  if (root === "max_candidates") return { id: "aug-max-candidates" };
  if (root === "min_distance") return { id: "aug-min-distance" };
  return PARAMS[root] ? { id: `aug-${PARAMS[root].slug}` } : null;
}

function example() {
  $("aug-text").value = t("augment.example");
  clearFieldError("aug-text");
}

registerPanel("augment", { submit, relabel: render, resolveField, setup, example });
