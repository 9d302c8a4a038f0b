// The client libraries under test: the oldest and newest pusher-js 8.x and Laravel Echo 2.x
// this package claims (devDependencies, installed side by side through npm aliases).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

function versionOf(name) {
  // (laravel-echo's "exports" does not export its package.json)
  const manifest = new URL(`../../node_modules/${name}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(manifest, 'utf8')).version;
}

export const PUSHER_VERSIONS = ['pusher-js-oldest', 'pusher-js'].map((name) => {
  const module = require(name);
  const version = versionOf(name);
  return { name: `pusher-js ${version}`, version, Pusher: module.default ?? module };
});

// Imported as ESM: laravel-echo 2.0.0's CommonJS build cannot be require()d (its .js file sits
// in a "type": "module" package).
export const ECHO_VERSIONS = await Promise.all(['laravel-echo-oldest', 'laravel-echo'].map(
  async (name) => {
    const version = versionOf(name);
    return { name: `laravel-echo ${version}`, version, Echo: (await import(name)).default };
  }));

for (const { Pusher } of PUSHER_VERSIONS) Pusher.logToConsole = false;

export function pusherOptions(port, extra = {}) {
  return {
    cluster: 'mt1', // required by the constructor; wsHost/wsPort decide where it connects
    wsHost: '127.0.0.1',
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    enableStats: false,
    ...extra,
  };
}

/** Record what the application sees on a channel: [event, data] pairs, pusher:* excluded. */
export function recordEvents(channel) {
  const seen = [];
  channel.bind_global((event, data) => {
    if (!event.startsWith('pusher:')) seen.push([event, data]);
  });
  return seen;
}

/** Poll until `predicate()` is truthy. */
export async function waitFor(predicate, what, timeout = 10000) {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Resolve once pusher.connection is `connected` (with a fresh socket id). */
export function connected(pusher, timeout = 5000) {
  return waitFor(() => pusher.connection.state === 'connected', 'the connected state', timeout);
}
