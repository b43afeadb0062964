/* The model badge and the demo banner: what /healthz says, polled so the badge follows a replica's recovery. */

import { api } from "./api.js";
import { $, setMessage, t } from "./dom.js";
import { HEALTH_POLL_MS, state } from "./state.js";

export async function loadHealth() {
  const badge = $("model-info");
  try {
    const data = await api("GET", "/healthz");
    state.health = data;
    state.healthFailed = false;
    $("model-name").textContent = data.model;
    badge.dataset.state = data.demo ? "demo" : "ok";
    badge.title = t("model.details", { device: data.device, dtype: data.dtype });
    $("demo-banner").hidden = !data.demo;
  } catch (err) {
    state.healthFailed = true;
    if (err.status === 503) {
      // the service answers but no model replica runs (starting, crashed, being replaced)
      badge.dataset.state = "unavailable";
      badge.title = typeof err.detail === "string" ? err.detail : "";
      setMessage($("model-name"), "model.unavailable");
    } else {
      badge.dataset.state = "error";
      setMessage($("model-name"), "model.unreachable");
    }
  }
}

// The badge follows the model: unavailable while no model replica runs, back when one does.
export function watchHealth() {
  setTimeout(async () => {
    await loadHealth();
    watchHealth();
  }, HEALTH_POLL_MS);
}

export function relabelHealth() {
  if (state.health) $("model-info").title = t("model.details", { device: state.health.device, dtype: state.health.dtype });
}
