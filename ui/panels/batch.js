/* 批量增强: up to 50 texts, one per line, their paraphrases in order, and the results as JSONL or CSV. */

import { api } from "../lib/api.js";
import { run } from "../lib/busy.js";
import { $, h, seconds, setMessage, t } from "../lib/dom.js";
import { clearErrors, clearFieldError, showProblems } from "../lib/errors.js";
import { readParams } from "../lib/params.js";
import { copyText, csvCell, download, flash, metaLine, resultItem, stamp, truncatedBadge } from "../lib/results.js";
import { MAX_BATCH_LINES, PARAMS, SAMPLING, registerPanel, state } from "../lib/state.js";

function batchLines() {
  const items = [];
  $("batch-texts")
    .value.split(/\r?\n/)
    .forEach((line, index) => {
      const text = line.trim();
      if (text) items.push({ text, line: index + 1 });
    });
  return items;
}

function showBatchMessage(key, params) {
  const node = $("batch-message");
  setMessage(node, key, params);
  node.hidden = false;
  $("batch-texts").classList.add("over-limit");
}

function hideBatchMessage() {
  const node = $("batch-message");
  node.hidden = true;
  setMessage(node, null);
  $("batch-texts").classList.remove("over-limit");
}

function updateBatchCount() {
  const n = batchLines().length;
  const counter = $("batch-count");
  counter.textContent = `${n} / ${MAX_BATCH_LINES}`;
  counter.classList.toggle("over", n > MAX_BATCH_LINES);
  if (n > MAX_BATCH_LINES) showBatchMessage("batch.tooMany", { n, extra: n - MAX_BATCH_LINES });
  else if ($("batch-message").dataset.msgKey === "batch.tooMany" || (n > 0 && $("batch-message").dataset.msgKey === "batch.empty")) hideBatchMessage();
}

function submit() {
  clearErrors("batch");
  const items = batchLines();
  if (!items.length) {
    showBatchMessage("batch.empty");
    $("batch-texts").focus();
    return undefined;
  }
  if (items.length > MAX_BATCH_LINES) {
    // Over the limit: say so and send nothing.
    showBatchMessage("batch.tooMany", { n: items.length, extra: items.length - MAX_BATCH_LINES });
    $("batch-texts").focus();
    return undefined;
  }
  const problems = [];
  const params = readParams("batch", SAMPLING, problems);
  if (problems.length) return showProblems("batch", problems);
  const num = Number($("batch-num").value);
  state.batchSent = items;
  return run("batch", async () => {
    const started = performance.now();
    const data = await api("POST", "/augment_batch", { texts: items.map((item) => item.text), num_return_sequences: num, ...params });
    state.batch = {
      items,
      outputs: data.augmented_texts || [],
      truncated: data.truncated || [],
      ms: performance.now() - started,
    };
    render();
  });
}

function render() {
  const result = state.batch;
  if (!result) return;
  $("batch-empty").hidden = true;
  const groups = result.items.map((item, index) => {
    const outputs = result.outputs[index] || [];
    const list = h("ol", { class: "result-list compact" }, outputs.map((text) => resultItem(text, "batch-result")));
    if (!outputs.length) list.append(h("li", { class: "result-none" }, t("common.noResults")));
    return h(
      "div",
      { class: "batch-group", "data-testid": "batch-group", "data-index": index, "data-line": item.line },
      h(
        "div",
        { class: "group-head" },
        h("span", { class: "group-num" }, t("batch.group", { n: item.line })),
        result.truncated[index] ? truncatedBadge() : null,
      ),
      h("p", { class: "group-source", "data-testid": "batch-source" }, h("span", { class: "source-tag" }, t("batch.source")), h("span", { class: "source-text" }, item.text)),
      list,
    );
  });
  $("batch-results").replaceChildren(...groups);
  const total = result.outputs.reduce((sum, list) => sum + list.length, 0);
  metaLine($("batch-meta"), [t("batch.summary", { n: result.items.length, m: total }), t("common.elapsed", { s: seconds(result.ms) })]);
  for (const id of ["batch-copy-all", "batch-download-jsonl", "batch-download-csv"]) $(id).disabled = false;
}

function batchRows() {
  const result = state.batch;
  return result.items.map((item, index) => ({
    line: item.line,
    text: item.text,
    augmented_texts: result.outputs[index] || [],
    truncated: !!result.truncated[index],
  }));
}

async function copyAllBatch() {
  if (!state.batch) return;
  const lines = [];
  for (const row of batchRows()) for (const text of row.augmented_texts) lines.push(`${row.text}\t${text}`);
  const ok = await copyText(lines.join("\n"));
  flash($("batch-copy-all"), ok ? "batch.copiedAll" : "common.copyFailed", { n: lines.length });
}

function downloadJsonl() {
  if (!state.batch) return;
  const body = batchRows()
    .map((row) => JSON.stringify(row))
    .join("\n");
  download(`augment-batch-${stamp()}.jsonl`, "application/x-ndjson;charset=utf-8", `${body}\n`);
}

function downloadCsv() {
  if (!state.batch) return;
  const lines = [["line", "text", "variant", "augmented_text", "truncated"].join(",")];
  for (const row of batchRows()) {
    row.augmented_texts.forEach((text, i) => lines.push([row.line, row.text, i + 1, text, row.truncated].map(csvCell).join(",")));
  }
  // BOM so spreadsheet programs read the Chinese text as UTF-8.
  download(`augment-batch-${stamp()}.csv`, "text/csv;charset=utf-8", `\uFEFF${lines.join("\r\n")}\r\n`);
}

function resolveField(field) {
  const [root, index] = field.split(".");
  if (root === "texts") {
    const lines = state.batchSent ? state.batchSent.map((item) => item.line) : [];
    if (index !== undefined && /^\d+$/.test(index)) {
      const line = lines[Number(index)] !== undefined ? lines[Number(index)] : Number(index) + 1;
      return { id: "batch-texts", key: "error.line", params: { n: line } };
    }
    return { id: "batch-texts" };
  }
  if (root === "num_return_sequences") return { id: "batch-num" };
  return PARAMS[root] ? { id: `batch-${PARAMS[root].slug}` } : null;
}

function setup() {
  $("batch-texts").addEventListener("input", () => {
    clearFieldError("batch-texts");
    updateBatchCount();
  });
  $("batch-num").addEventListener("change", () => clearFieldError("batch-num"));
  $("batch-copy-all").addEventListener("click", copyAllBatch);
  $("batch-download-jsonl").addEventListener("click", downloadJsonl);
  $("batch-download-csv").addEventListener("click", downloadCsv);
  updateBatchCount();
}

function example() {
  $("batch-texts").value = t("batch.example");
  updateBatchCount();
}

registerPanel("batch", { submit, relabel: render, resolveField, setup, example, clearErrors: hideBatchMessage });
