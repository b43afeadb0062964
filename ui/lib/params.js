/* The sampling controls (a number box and a slider per knob) and reading numbers from the form. */

import { RawNumber } from "./api.js";
import { $, h, t } from "./dom.js";
import { clearFieldError } from "./errors.js";
import { PARAMS } from "./state.js";

// The controls start empty (an empty field sends nothing: the service's default applies); applySchemaDefaults
// then shows the service's defaults and bounds in them.
export function buildParams(container) {
  const prefix = container.dataset.prefix;
  container.classList.add("param-grid");
  for (const name of container.dataset.params.split(/\s+/)) {
    const spec = PARAMS[name];
    const id = `${prefix}-${spec.slug}`;
    const number = h("input", {
      id,
      "data-testid": id,
      "data-param": name,
      type: "number",
      inputmode: spec.step === 1 ? "numeric" : "decimal",
      step: spec.step,
      class: "num-input",
    });
    if (name === "seed") number.dataset.i18nPlaceholder = "placeholder.seed";
    const controls = [number];
    if (spec.range) {
      const range = h("input", {
        id: `${id}-range`,
        type: "range",
        step: spec.step,
        tabindex: "-1",
        "aria-hidden": "true",
        class: "range-input",
      });
      range.addEventListener("input", () => {
        number.value = range.value;
        clearFieldError(id);
      });
      number.addEventListener("input", () => {
        const parsed = Number(number.value);
        if (number.value !== "" && Number.isFinite(parsed)) range.value = String(parsed);
      });
      controls.unshift(range);
    }
    number.addEventListener("input", () => clearFieldError(id));
    const hintKey = prefix === "gen" && name === "temperature" ? "hint.temperature.generate" : `hint.${name}`;
    container.append(
      h(
        "div",
        { class: `field param param-${spec.slug}`, "data-param": name },
        h("label", { for: id, "data-i18n": `param.${name}` }, t(`param.${name}`)),
        h("div", { class: spec.range ? "control-row" : "control-row single" }, controls),
        h("p", { class: "hint", id: `${id}-hint`, "data-i18n": hintKey }, t(hintKey)),
        h("p", { class: "field-error", id: `${id}-error`, "data-testid": `error-${id}`, role: "alert", hidden: true }),
      ),
    );
  }
}

// One field's JSON Schema as the document states it: a nullable field is anyOf [its schema, null].
function fieldSchema(property) {
  const own = (property.anyOf || []).find((option) => option.type && option.type !== "null");
  return { ...own, ...property };
}

// A default as the box shows it: a whole number in a fractional control keeps one decimal (1.0, not 1).
function shown(value, step) {
  return Number.isInteger(value) && step < 1 ? value.toFixed(1) : String(value);
}

/* Every sampling control's default and bounds from the service's OpenAPI document, so they live in one place:
   the request schemas (each .params container names its schema in data-schema). False when the document could
   not be read: the controls stay empty and the service applies its defaults to what is left out. */
export async function applySchemaDefaults() {
  let schemas;
  try {
    const response = await fetch("/openapi.json", { headers: { Accept: "application/json" } });
    schemas = (await response.json()).components.schemas;
  } catch (err) {
    return false;
  }
  for (const container of document.querySelectorAll(".params[data-schema]")) {
    const properties = (schemas[container.dataset.schema] || {}).properties || {};
    for (const number of container.querySelectorAll("input.num-input[data-param]")) {
      const property = properties[number.dataset.param];
      if (!property) continue;
      const schema = fieldSchema(property);
      const step = Number(number.step);
      const low = schema.minimum ?? (schema.exclusiveMinimum !== undefined ? schema.exclusiveMinimum + step : undefined);
      const high = schema.maximum ?? (schema.exclusiveMaximum !== undefined ? schema.exclusiveMaximum - step : undefined);
      const range = document.getElementById(`${number.id}-range`);
      for (const input of [number, range]) {
        if (!input) continue;
        if (low !== undefined) input.min = String(low);
        if (high !== undefined && Number.isSafeInteger(Math.round(high))) input.max = String(high);
      }
      if (schema.default !== undefined && schema.default !== null && number.value === "") {
        number.value = shown(schema.default, step);
        if (range) range.value = String(schema.default);
      }
    }
  }
  return true;
}

// A number box's value: undefined when empty (the server's default applies) or not a number (a problem is noted).
export function readNumber(id, problems) {
  const input = $(id);
  if (!input) return undefined;
  if (input.validity && input.validity.badInput) {
    problems.push([id, "error.notNumber"]);
    return undefined;
  }
  const raw = input.value.trim();
  if (raw === "") return undefined;
  const value = Number(raw);
  if (!Number.isFinite(value)) {
    problems.push([id, "error.notNumber"]);
    return undefined;
  }
  return /^\d+$/.test(raw) && !Number.isSafeInteger(value) ? new RawNumber(raw) : value;
}

// The sampling fields the user filled in; empty ones are left out so the server's defaults apply.
export function readParams(prefix, names, problems) {
  const payload = {};
  for (const name of names) {
    const value = readNumber(`${prefix}-${PARAMS[name].slug}`, problems);
    if (value !== undefined) payload[name] = value;
  }
  return payload;
}
