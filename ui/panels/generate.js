/* 通用任务: the model card's other tasks (GET /tasks), or a raw prompt, through /generate. */

import { ApiError, api, detailText } from "../lib/api.js";
import { run } from "../lib/busy.js";
import { $, I18N, h, seconds, setMessage, t } from "../lib/dom.js";
import { clearErrors, clearFieldError, showProblems } from "../lib/errors.js";
import { readParams } from "../lib/params.js";
import { metaLine, truncatedBadge } from "../lib/results.js";
import { PARAMS, SAMPLING, registerPanel, state } from "../lib/state.js";

const TASK_ORDER = ["sentiment", "keywords", "title", "summary", "opinion_target", "translation", "question_generation"];
const PROMPT_TASK = "__prompt__";
const SHORT_FIELDS = new Set(["answer"]);

function sortTasks(tasks) {
  const rank = (name) => (TASK_ORDER.includes(name) ? TASK_ORDER.indexOf(name) : TASK_ORDER.length);
  return tasks.slice().sort((a, b) => rank(a.name) - rank(b.name) || a.name.localeCompare(b.name));
}

function taskLabel(name) {
  const key = `task.${name}`;
  const label = t(key);
  return label === key ? name : label;
}

function fieldLabel(name) {
  const key = `field.${name}`;
  const label = t(key);
  return label === key ? name : label;
}

export async function loadTasks() {
  const status = $("gen-tasks-status");
  setMessage(status, "generate.loadingTasks");
  status.hidden = false;
  status.classList.remove("is-error");
  state.tasksError = null;
  try {
    const data = await api("GET", "/tasks");
    state.tasks = sortTasks(data.tasks || []);
    setMessage(status, null);
    status.hidden = true;
    renderTaskOptions();
    renderGenFields();
  } catch (err) {
    state.tasksError = err;
    setMessage(status, "generate.tasksFailed", { msg: err instanceof ApiError ? `${err.status || ""} ${detailText(err.detail)}`.trim() : String(err) });
    status.classList.add("is-error");
    status.append(" ", h("button", { type: "button", class: "btn btn-link", onclick: loadTasks }, t("generate.retry")));
    renderTaskOptions();
  }
}

function currentTask() {
  const name = $("gen-task").value;
  if (name === PROMPT_TASK) return { name: PROMPT_TASK, fields: ["prompt"], template: "{prompt}" };
  return (state.tasks || []).find((task) => task.name === name) || null;
}

function renderTaskOptions() {
  const select = $("gen-task");
  const previous = select.value;
  const options = (state.tasks || []).map((task) => h("option", { value: task.name }, taskLabel(task.name)));
  options.push(h("option", { value: PROMPT_TASK }, t("generate.customPrompt")));
  select.replaceChildren(...options);
  if (previous && [...select.options].some((option) => option.value === previous)) select.value = previous;
}

function saveGenValues() {
  for (const input of $("gen-fields").querySelectorAll("[data-field]")) state.genValues[input.dataset.field] = input.value;
}

function renderGenFields() {
  saveGenValues();
  const task = currentTask();
  const container = $("gen-fields");
  if (!task) {
    container.replaceChildren();
    $("gen-template-box").hidden = true;
    return;
  }
  const fields = task.fields.map((name) => {
    const id = `gen-field-${name}`;
    const known = `field.${name}` in I18N.zh;
    const control = SHORT_FIELDS.has(name)
      ? h("input", { id, type: "text", "data-testid": id, "data-field": name, autocomplete: "off" })
      : h("textarea", { id, rows: name === "passage" || name === "prompt" ? 5 : 4, "data-testid": id, "data-field": name });
    control.value = state.genValues[name] || "";
    control.addEventListener("input", () => clearFieldError(id));
    return h(
      "div",
      { class: "field", "data-gen-field": name },
      h("label", { for: id, "data-i18n": known ? `field.${name}` : null }, fieldLabel(name)),
      control,
      h("p", { class: "field-error", id: `${id}-error`, "data-testid": `error-${id}`, role: "alert", hidden: true }),
    );
  });
  container.replaceChildren(...fields);
  const showTemplate = task.name !== PROMPT_TASK;
  $("gen-template-box").hidden = !showTemplate;
  $("gen-template").textContent = showTemplate ? task.template : "";
}

function submit() {
  clearErrors("generate");
  const task = currentTask();
  const problems = [];
  if (!task) {
    problems.push(["gen-task", "error.required"]);
    return showProblems("generate", problems);
  }
  const payload = task.name === PROMPT_TASK ? {} : { task: task.name };
  const custom = {};
  for (const name of task.fields) {
    const input = $(`gen-field-${name}`);
    const value = input ? input.value.trim() : "";
    if (!value) problems.push([`gen-field-${name}`, "error.required"]);
    if (["text", "passage", "answer", "prompt"].includes(name)) payload[name] = value;
    else custom[name] = value;
  }
  if (Object.keys(custom).length) payload.fields = custom;
  Object.assign(payload, readParams("gen", SAMPLING, problems));
  if (problems.length) return showProblems("generate", problems);
  return run("generate", async () => {
    const started = performance.now();
    const data = await api("POST", "/generate", payload);
    state.generate = { data, ms: performance.now() - started };
    render();
  });
}

function render() {
  const result = state.generate;
  if (!result) return;
  const { data } = result;
  $("gen-empty").hidden = true;
  $("gen-result").hidden = false;
  $("gen-output").textContent = data.text;
  metaLine($("gen-meta"), [data.task ? taskLabel(data.task) : t("generate.customPrompt"), t("common.elapsed", { s: seconds(result.ms) }), data.truncated && truncatedBadge()]);
}

function resolveField(field) {
  const parts = field.split(".");
  const root = parts[0];
  if (root === "task") return { id: "gen-task" };
  if (root === "fields" && parts[1] && $(`gen-field-${parts[1]}`)) return { id: `gen-field-${parts[1]}` };
  if (PARAMS[root] && root !== "num_return_sequences") return { id: `gen-${PARAMS[root].slug}` };
  if ($(`gen-field-${root}`)) return { id: `gen-field-${root}` };
  return null;
}

function setup() {
  $("gen-task").addEventListener("change", () => {
    clearErrors("generate");
    renderGenFields();
  });
}

function relabel() {
  if (state.tasks || state.tasksError) renderTaskOptions();
  render();
}

function example() {
  const task = currentTask();
  if (!task) return;
  for (const name of task.fields) {
    const input = $(`gen-field-${name}`);
    const key = `generate.example.${name}`;
    if (input && key in I18N.zh) input.value = t(key);
  }
  clearErrors("generate");
}

registerPanel("generate", { submit, relabel, resolveField, setup, example });
