/* Labels as people type them: separated by an ASCII or a full-width comma. */

export function splitLabels(text) {
  return text.split(/[,，]/).map((s) => s.trim());
}
