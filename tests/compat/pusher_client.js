#!/usr/bin/env node
// pusher-js compatibility client for tests/server/test_pusher_js.py.
//
// Connects the official pusher-js (Node build) to one turnout node, subscribes to the given
// channels and prints one JSON object per line on stdout:
//
//   {"type":"state","previous":"connecting","current":"connected"}
//   {"type":"connected","socket_id":"123.456"}
//   {"type":"subscription_succeeded","channel":"..."}
//   {"type":"subscription_error","channel":"...","error":{...as pusher-js reports it...}}
//   {"type":"connection_error","error":{...}}            (pusher.connection 'error')
//   {"type":"event","channel":"...","event":"...","data":...,"offset":1,"epoch":"..."}
//   {"type":"done","reason":"count"|"timeout","events":N}
//
// "event" lines are emitted from pusher-js's own channel dispatch (channel.bind_global); the
// offset/epoch come from the raw websocket frame of the same message (pusher-js's decoded
// message keeps only event/channel/data/user_id, so they are read from the transport).
//
// Private channels are authorized by a channelAuthorization customHandler that POSTs
// {"socket_id", "channel_name"} to --auth-url and passes the JSON answer ({"auth": "key:hex"})
// to pusher-js; the signing is done by the test, never here.
//
// Exits 0 after --expect channel events, 3 after --timeout seconds, 1 on a usage error.
'use strict';

const { parseArgs } = require('node:util');

let Pusher;
try {
  Pusher = require('pusher-js');
} catch (err) {
  process.stderr.write(
    `cannot load pusher-js (${err.message}): run scripts/setup.sh to npm install tests/compat\n`);
  process.exit(1);
}

// pusher-js's own log (debug included) goes to stderr, which the test shows on failure.
Pusher.log = (message) => process.stderr.write(`${message}\n`);

const { values: opts } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    key: { type: 'string', default: 'turnout-key' },
    'auth-url': { type: 'string' },
    channel: { type: 'string', multiple: true, default: [] },
    expect: { type: 'string', default: '0' },
    timeout: { type: 'string', default: '60' },
  },
});

if (!opts.port) {
  process.stderr.write('usage: pusher_client.js --port N [--host H] [--key K] '
    + '[--auth-url URL] --channel NAME... [--expect N] [--timeout SECONDS]\n');
  process.exit(1);
}

const expected = Number(opts.expect);
let received = 0;
let finished = false;

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function finish(reason, code) {
  if (finished) return;
  finished = true;
  emit({ type: 'done', reason, events: received });
  try {
    pusher.disconnect();
  } catch (err) {
    // already closed
  }
  // stdout is a pipe (synchronous on Linux), but exit only once the last line is handed over.
  process.stdout.write('', () => process.exit(code));
}

function authorize(params, callback) {
  if (!opts['auth-url']) {
    callback(new Error('no --auth-url given for a private channel'), null);
    return;
  }
  fetch(opts['auth-url'], {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ socket_id: params.socketId, channel_name: params.channelName }),
  })
    .then(async (response) => {
      if (!response.ok) {
        throw new Error(`auth endpoint answered ${response.status}: ${await response.text()}`);
      }
      return response.json();
    })
    .then((body) => callback(null, body), (err) => callback(err, null));
}

const pusher = new Pusher(opts.key, {
  cluster: 'mt1', // required by the constructor; wsHost/wsPort below decide where it connects
  wsHost: opts.host,
  wsPort: Number(opts.port),
  forceTLS: false,
  enabledTransports: ['ws'],
  enableStats: false, // (8.x's name for the deprecated disableStats: true)
  channelAuthorization: { customHandler: authorize },
});

// Events dispatched by pusher-js, waiting for the raw frame they came from (same tick).
const pending = [];

function onRawMessage(messageEvent) {
  let raw;
  try {
    raw = JSON.parse(messageEvent.data) || {};
  } catch (err) {
    raw = {};
  }
  while (pending.length > 0) {
    const record = pending.shift();
    if (record.channel === raw.channel && record.event === raw.event) {
      record.offset = raw.offset === undefined ? null : raw.offset;
      record.epoch = raw.epoch === undefined ? null : raw.epoch;
    }
    emit(record);
    received += 1;
  }
  if (expected > 0 && received >= expected) finish('count', 0);
}

pusher.connection.bind('state_change', (states) => {
  emit({ type: 'state', previous: states.previous, current: states.current });
});

pusher.connection.bind('connected', () => {
  // Listeners bound after pusher-js's own run after it, so channel callbacks fire first.
  const transport = pusher.connection.connection && pusher.connection.connection.transport;
  if (transport) transport.bind('message', onRawMessage);
  emit({ type: 'connected', socket_id: pusher.connection.socket_id });
});

pusher.connection.bind('error', (err) => {
  let error;
  try {
    error = JSON.parse(JSON.stringify(err));
  } catch (e) {
    error = String(err);
  }
  emit({ type: 'connection_error', error });
});

for (const name of opts.channel) {
  const channel = pusher.subscribe(name);
  channel.bind('pusher:subscription_succeeded', () => {
    emit({ type: 'subscription_succeeded', channel: name });
  });
  channel.bind('pusher:subscription_error', (error) => {
    emit({ type: 'subscription_error', channel: name, error });
  });
  channel.bind_global((event, data) => {
    if (event.startsWith('pusher:')) return;
    pending.push({ type: 'event', channel: name, event, data, offset: null, epoch: null });
    // The raw listener normally takes it in this same tick; this only guards against a frame
    // that never reaches it (then offset/epoch stay null and the test reports that).
    setImmediate(() => onRawMessage({ data: 'null' }));
  });
}

setTimeout(() => finish('timeout', 3), Number(opts.timeout) * 1000).unref();
// Keep the process alive until finish() even if the socket is closed.
const keepAlive = setInterval(() => {}, 1 << 30);
process.on('exit', () => clearInterval(keepAlive));
process.on('SIGTERM', () => finish('sigterm', 143));
