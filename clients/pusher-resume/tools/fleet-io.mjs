// What tools/node-fleet.mjs and tools/browser-fleet.mjs share: the JSON-lines protocol with
// the process that drives them (a pytest today, the harness later), the clock, channel
// signing, and where the client libraries are.
//
// Protocol. Commands arrive on stdin, one JSON object a line:
//   {"op": "open", "viewer": {...}}         start one viewer (see viewerConfig below)
//   {"op": "open_many", "count": N, "rate_per_s": R, "viewer": {...}}
//                                            N viewers "<id>-0".."<id>-(N-1)", R a second
//   {"op": "stats"}                          every viewer with the plugin reports its counters
//   {"op": "stop"}                           close every viewer, print {"type":"done"}, exit 0
// Records go to stdout, one JSON object a line, each with "t": the receive time in seconds on
// CLOCK_MONOTONIC (the clock Python's time.monotonic() reads, so the driver can merge them with
// its own records). Record types: those of tools/viewer.mjs plus
//   {"type": "ready", ...}   the fleet accepts commands
//   {"type": "opened", "client": id}
//   {"type": "fatal", "message": ...}  then exit 1
//   {"type": "done"}
import { createHmac } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const PACKAGE_DIR = fileURLToPath(new URL('..', import.meta.url));

/** npm names of the client libraries (package.json devDependencies, npm aliases). */
export const LIBRARIES = {
  pusher: { newest: 'pusher-js', oldest: 'pusher-js-oldest' },
  echo: { newest: 'laravel-echo', oldest: 'laravel-echo-oldest' },
};

/** Seconds on CLOCK_MONOTONIC (libuv's hrtime is clock_gettime(CLOCK_MONOTONIC) on Linux). */
export function monotonicSeconds() {
  return Number(process.hrtime.bigint()) / 1e9;
}

/** A stdout writer that batches lines per event-loop turn (many viewers, many deliveries). */
export function createOutput(stream = process.stdout) {
  let lines = [];
  let scheduled = false;
  function flush() {
    scheduled = false;
    if (lines.length === 0) return;
    const chunk = lines.join('');
    lines = [];
    stream.write(chunk);
  }
  return {
    write(record) {
      lines.push(`${JSON.stringify({ ...record, t: record.t ?? monotonicSeconds() })}\n`);
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    },
    /** Write what is pending, then call `done` once it is handed to the OS. */
    end(done) {
      flush();
      stream.write('', done);
    },
  };
}

/** Call `onCommand(object)` for each stdin line; `onEnd()` when stdin closes. */
export function readCommands(onCommand, onEnd) {
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  lines.on('line', (line) => {
    if (line.trim() === '') return;
    let command;
    try {
      command = JSON.parse(line);
    } catch (err) {
      onCommand({ op: 'invalid', line, error: String(err) });
      return;
    }
    onCommand(command);
  });
  lines.on('close', onEnd);
}

/** Pusher channel authorization: "key:HMAC-SHA256(secret, socket_id:channel)". */
export function signChannel(key, secret, socketId, channel) {
  const signature = createHmac('sha256', secret).update(`${socketId}:${channel}`).digest('hex');
  return `${key}:${signature}`;
}

/**
 * A viewer's settings from a command, with defaults: {id, client: 'pusher-js'|'echo',
 * pusher: 'newest'|'oldest', echo: 'newest'|'oldest', plugin: bool, channels: [...]}; the
 * connection settings (key, wsHost, wsPort) come from the fleet's own settings.
 */
export function viewerConfig(viewer, fleet) {
  if (typeof viewer?.id !== 'string' || !Array.isArray(viewer.channels)) {
    throw new Error(`a viewer needs "id" (string) and "channels" (list): ${JSON.stringify(viewer)}`);
  }
  const pick = (value, allowed, name) => {
    const chosen = value ?? allowed[0];
    if (!allowed.includes(chosen)) throw new Error(`viewer ${viewer.id}: ${name} must be one of ${allowed}`);
    return chosen;
  };
  return {
    id: viewer.id,
    client: pick(viewer.client, ['pusher-js', 'echo'], 'client'),
    pusher: pick(viewer.pusher, ['newest', 'oldest'], 'pusher'),
    echo: pick(viewer.echo, ['newest', 'oldest'], 'echo'),
    plugin: viewer.plugin !== false,
    channels: viewer.channels.map(String),
    key: fleet.key,
    wsHost: viewer.wsHost ?? fleet.wsHost,
    wsPort: Number(viewer.wsPort ?? fleet.wsPort),
  };
}

/** The fleet's settings: argv[2] as JSON, the app secret from FLEET_APP_SECRET. */
export function fleetSettings(argv = process.argv, env = process.env) {
  let settings;
  try {
    settings = JSON.parse(argv[2] ?? '');
  } catch {
    throw new Error('usage: node <fleet>.mjs \'{"key": K, "wsHost": H, "wsPort": P}\' '
      + '(app secret in FLEET_APP_SECRET, for private channels)');
  }
  for (const name of ['key', 'wsHost', 'wsPort']) {
    if (settings[name] === undefined) throw new Error(`fleet settings need "${name}"`);
  }
  return { ...settings, secret: env.FLEET_APP_SECRET ?? null };
}
