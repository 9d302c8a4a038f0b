#!/usr/bin/env node
// Many pusher-js (or Echo) viewers in one Node process, with or without resume(), driven over
// stdin and reporting every delivery on stdout as JSON lines (protocol: tools/fleet-io.mjs).
//
//   FLEET_APP_SECRET=secret node tools/node-fleet.mjs '{"key":"k","wsHost":"127.0.0.1","wsPort":6000}'
//   {"op":"open_many","count":200,"rate_per_s":100,"viewer":{"id":"pjs","plugin":true,"channels":["results"]}}
//
// Private channels are signed in-process (pusher-js's customHandler) with FLEET_APP_SECRET.
// Each viewer holds one websocket: mind the 20,000 open files per process.
import { createRequire } from 'node:module';

import { resume } from '@turnout/pusher-resume';

import {
  LIBRARIES,
  createOutput,
  fleetSettings,
  readCommands,
  signChannel,
  viewerConfig,
} from './fleet-io.mjs';
import { startViewer } from './viewer.mjs';

const require = createRequire(import.meta.url);
const output = createOutput();
const viewers = new Map();
const libraries = new Map();

function fatal(message) {
  output.write({ type: 'fatal', message });
  output.end(() => process.exit(1));
}

async function library(kind, which) {
  const name = LIBRARIES[kind][which];
  if (!libraries.has(name)) {
    if (kind === 'pusher') {
      const module = require(name);
      const Pusher = module.default ?? module;
      Pusher.logToConsole = false;
      libraries.set(name, Pusher);
    } else {
      // ESM: laravel-echo 2.0.0's CommonJS build cannot be require()d.
      libraries.set(name, (await import(name)).default);
    }
  }
  return libraries.get(name);
}

let settings;
try {
  settings = fleetSettings();
} catch (err) {
  fatal(err.message);
}

function authorizer() {
  return ({ socketId, channelName }, callback) => {
    if (settings.secret === null) {
      callback(new Error('FLEET_APP_SECRET is not set: cannot sign private channels'), null);
      return;
    }
    callback(null, { auth: signChannel(settings.key, settings.secret, socketId, channelName) });
  };
}

async function open(viewer) {
  const config = viewerConfig(viewer, settings);
  if (viewers.has(config.id)) throw new Error(`viewer ${config.id} is already open`);
  const Pusher = await library('pusher', config.pusher);
  const Echo = config.client === 'echo' ? await library('echo', config.echo) : null;
  viewers.set(config.id, startViewer({
    Pusher,
    Echo,
    resume: config.plugin ? resume : null,
    config: { ...config, auth: { customHandler: authorizer() } },
    report: (record) => output.write(record),
  }));
  output.write({ type: 'opened', client: config.id });
}

async function openMany({ count, rate_per_s: rate = 100, viewer }) {
  const interval = 1000 / Math.max(1, Number(rate));
  for (let i = 0; i < Number(count); i += 1) {
    await open({ ...viewer, id: `${viewer.id}-${i}` });
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

function stop() {
  for (const viewer of viewers.values()) viewer.close();
  output.write({ type: 'done', viewers: viewers.size });
  output.end(() => process.exit(0));
}

let queue = Promise.resolve(); // commands run in order
readCommands((command) => {
  queue = queue.then(async () => {
    switch (command.op) {
      case 'open': return open(command.viewer);
      case 'open_many': return openMany(command);
      case 'stats':
        for (const [client, viewer] of viewers) output.write({ type: 'stats', client, stats: viewer.stats() });
        return undefined;
      case 'stop': return stop();
      default: throw new Error(`unknown command ${JSON.stringify(command)}`);
    }
  }).catch((err) => fatal(String(err?.stack ?? err)));
}, () => queue.then(stop));

process.on('SIGTERM', stop);
output.write({ type: 'ready', pid: process.pid });
