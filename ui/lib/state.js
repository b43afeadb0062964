/* What the page holds between events, its constants, and the registry of panels (each panel module registers itself). */

export const MAX_BATCH_LINES = 50;
export const REQUEST_TIMEOUT_MS = 150000;
export const HEALTH_POLL_MS = 3000; // short enough to show a model replica's few seconds of recovery
export const LANG_KEY = "mt5-ui-lang";
export const API_KEY_KEY = "mt5-ui-api-key";
export const PANELS = ["augment", "batch", "classify", "generate", "dataset"];

// Sampling controls. Their defaults and bounds are the service's own, read from its OpenAPI document
// (lib/params.js, applySchemaDefaults); the bounds are only hints: out-of-range values are sent and the 422 shown.
export const PARAMS = {
  num_return_sequences: { slug: "num", step: 1, range: true },
  max_length: { slug: "max-length", step: 1, range: true },
  temperature: { slug: "temperature", step: 0.05, range: true },
  top_k: { slug: "top-k", step: 1, range: true },
  top_p: { slug: "top-p", step: 0.01, range: true },
  seed: { slug: "seed", step: 1, range: false },
};
export const SAMPLING = ["max_length", "temperature", "top_k", "top_p", "seed"];

export const state = {
  lang: "zh",
  panel: "augment",
  apiKey: "",
  busy: {},
  health: null,
  healthFailed: false,
  tasks: null,
  tasksError: null,
  genValues: {},
  labels: [],
  augment: null,
  batch: null,
  classify: null,
  generate: null,
  jobs: null, // the caller's jobs as GET /jobs last said
  jobsError: null,
};

/* A panel: {submit, relabel (redraw in the current language), resolveField (a 422's field -> its input),
   setup (wire its inputs), example (fill in the example), clearErrors (its own extra clean-up)}. */
export const panels = {};

export function registerPanel(name, panel) {
  panels[name] = panel;
}
