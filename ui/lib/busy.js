/* One request per panel at a time: the submit button shows it is busy, and a failure is shown where it belongs. */

import { $ } from "./dom.js";
import { handleError } from "./errors.js";
import { state } from "./state.js";

const SUBMIT_IDS = { augment: "aug-submit", batch: "batch-submit", classify: "cls-submit", generate: "gen-submit", dataset: "ds-submit" };

function setBusy(panel, busy) {
  state.busy[panel] = busy;
  const button = $(SUBMIT_IDS[panel]);
  button.disabled = busy;
  button.classList.toggle("is-loading", busy);
  button.setAttribute("aria-busy", busy ? "true" : "false");
  $(`panel-${panel}`).setAttribute("aria-busy", busy ? "true" : "false");
}

// On a phone the results sit below the form: bring them into view once they arrive.
function revealResults(panel) {
  if (window.matchMedia && window.matchMedia("(max-width: 900px)").matches) {
    const card = $(`panel-${panel}`).querySelector(".results-card");
    if (card && card.getBoundingClientRect().top > window.innerHeight * 0.6) card.scrollIntoView({ behavior: "smooth", block: "start" });
  }
}

export async function run(panel, work) {
  if (state.busy[panel]) return;
  setBusy(panel, true);
  try {
    await work();
    revealResults(panel);
  } catch (err) {
    handleError(panel, err);
  } finally {
    setBusy(panel, false);
  }
}
