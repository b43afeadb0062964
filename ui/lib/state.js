/* What the page holds between events, its constants, and the registry of panels (each panel module registers itself). */

export const MAX_BATCH_LINES = 50;
export const REQUEST_TIMEOUT_MS = 150000;
export const HEALTH_POLL_MS = 3000; // short enough to show a model replica's few seconds of recovery
export const LANG_KEY = "mt5-ui-lang";
export const API_KEY_KEY = "mt5-ui-api-key";
export const PANELS = ["augment", "batch", "classify", "generate"];

// Sampling controls; limits mirror the API's, but are only hints: out-of-range values are sent and the server's 422 is shown.
export const PARAMS = {
  num_return_sequences: { slug: "num", min: 1, max: 10, step: 1, value: 1, range: true },
  max_length: { slug: "max-length", min: 1, max: 512, step: 1, value: 128, range: true },
  temperature: { slug: "temperature", min: 0, max: 2, step: 0.05, value: "1.0", range: true },
  top_k: { slug: "top-k", min: 0, max: 1000, step: 1, value: 50, range: true },
  top_p: { slug: "top-p", min: 0.01, max: 1, step: 0.01, value: 0.95, range: true },
  seed: { slug: "seed", min: 0, value: null, range: false },
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
};

/* A panel: {submit, relabel (redraw in the current language), resolveField (a 422's field -> its input),
   setup (wire its inputs), example (fill in the example), clearErrors (its own extra clean-up)}. */
export const panels = {};

export function registerPanel(name, panel) {
  panels[name] = panel;
}
