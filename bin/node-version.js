// The Node.js version check bin/postern.js runs before anything else. Plain JavaScript that old
// Node releases can parse (no imports of postern's code, nothing newer than ES2018), so an old
// Node prints what it needs instead of a syntax error.
//
// The one source of truth is package.json's "engines.node", a single ">=MAJOR.MINOR[.PATCH]".

/** [major, minor, patch] of "v22.15.0", "22.15", ">=22.15.0"; null when it is not one. */
export function parseVersion(text) {
  const m = /^\s*(?:>=\s*)?v?(\d+)(?:\.(\d+))?(?:\.(\d+))?\s*$/.exec(String(text));
  if (!m) return null;
  return [Number(m[1]), Number(m[2] || 0), Number(m[3] || 0)];
}

/** Whether `version` (process.version) is at least the minimum of `range` (">=22.15"). */
export function satisfies(version, range) {
  const have = parseVersion(version);
  const need = parseVersion(range);
  if (!have || !need) throw new Error(`cannot compare Node.js version ${JSON.stringify(version)} with ${JSON.stringify(range)}`);
  for (let i = 0; i < 3; i++) {
    if (have[i] !== need[i]) return have[i] > need[i];
  }
  return true;
}

/** The message for a Node.js that is too old; null when `version` is new enough. */
export function tooOld(version, range) {
  if (satisfies(version, range)) return null;
  const need = parseVersion(range).join('.');
  return `postern needs Node.js ${need} or newer (package.json engines.node "${range}"); this is Node.js ${version} (${process.execPath}).\n` +
    'Install Node.js 24 LTS (https://nodejs.org), or use the Docker image.\n';
}
