#!/usr/bin/env node
// Viewer pages in real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; nothing is downloaded), one page and one browser context per viewer, driven
// over stdin and reporting on stdout as JSON lines (protocol: tools/fleet-io.mjs).
//
//   FLEET_APP_SECRET=secret node tools/browser-fleet.mjs '{"key":"k","wsHost":"127.0.0.1","wsPort":6000}'
//   {"op":"open","viewer":{"id":"page-1","client":"echo","plugin":true,"channels":["results"]}}
//
// It serves the pages itself on 127.0.0.1 (an ephemeral port): tools/page/index.html, the
// package's ESM build (dist/esm), pusher-js's web build and laravel-echo's ESM build from
// node_modules, and POST /auth, the Pusher channel-authorization endpoint pusher-js's own XHR
// authorizer calls, which signs with FLEET_APP_SECRET.
// CHROMIUM overrides the browser binary.
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

import {
  LIBRARIES,
  PACKAGE_DIR,
  createOutput,
  fleetSettings,
  readCommands,
  signChannel,
  viewerConfig,
} from './fleet-io.mjs';

// DEVELOPERS.md's flags for this machine (playwright adds --headless, --no-sandbox through
// chromiumSandbox: false, and a fresh --user-data-dir of its own). Timer throttling is off so
// pages behave like foreground tabs.
const CHROMIUM_ARGS = [
  '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding', '--disable-backgrounding-occluded-windows',
];

const output = createOutput();
const pages = new Map(); // id -> {context, page}
let browser = null;
let server = null;
let stopping = false;

function fatal(message) {
  output.write({ type: 'fatal', message });
  output.end(() => process.exit(1));
}

let settings;
try {
  settings = fleetSettings();
} catch (err) {
  fatal(err.message);
}

const node = (name, ...rest) => join(PACKAGE_DIR, 'node_modules', name, ...rest);
const STATIC = new Map([
  ['/page.html', [join(PACKAGE_DIR, 'tools', 'page', 'index.html'), 'text/html']],
  ['/viewer.mjs', [join(PACKAGE_DIR, 'tools', 'viewer.mjs'), 'text/javascript']],
  ...Object.entries(LIBRARIES.pusher).map(([which, name]) => [
    `/vendor/pusher-js-${which}.js`, [node(name, 'dist', 'web', 'pusher.js'), 'text/javascript']]),
  ...Object.entries(LIBRARIES.echo).map(([which, name]) => [
    `/vendor/laravel-echo-${which}.mjs`, [node(name, 'dist', 'echo.js'), 'text/javascript']]),
]);

async function serve(request, response) {
  const url = new URL(request.url, 'http://localhost');
  const send = (status, type, body) => {
    response.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
    response.end(body);
  };
  if (url.pathname === '/favicon.ico') return send(204, 'image/x-icon', '');
  if (request.method === 'POST' && url.pathname === '/auth') {
    let body = '';
    for await (const chunk of request) body += chunk;
    const form = new URLSearchParams(body);
    const socketId = form.get('socket_id');
    const channel = form.get('channel_name');
    if (!socketId || !channel) return send(400, 'text/plain', 'socket_id and channel_name are required');
    if (settings.secret === null) return send(500, 'text/plain', 'FLEET_APP_SECRET is not set');
    return send(200, 'application/json',
      JSON.stringify({ auth: signChannel(settings.key, settings.secret, socketId, channel) }));
  }
  let file = STATIC.get(url.pathname);
  const dist = url.pathname.match(/^\/pusher-resume\/([\w.-]+\.js(?:\.map)?)$/);
  if (dist) file = [join(PACKAGE_DIR, 'dist', 'esm', dist[1]), 'text/javascript'];
  if (request.method !== 'GET' || file === undefined) return send(404, 'text/plain', 'not found');
  try {
    return send(200, file[1], await readFile(file[0]));
  } catch (err) {
    return send(404, 'text/plain', `cannot read ${file[0]}: ${err.message} (npm install && npm run build?)`);
  }
}

async function start() {
  server = createServer((request, response) => {
    serve(request, response).catch((err) => {
      response.writeHead(500);
      response.end(String(err));
    });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
  try {
    browser = await chromium.launch({
      executablePath, headless: true, chromiumSandbox: false, args: CHROMIUM_ARGS, timeout: 60000,
    });
  } catch (err) {
    throw new Error(`cannot start ${executablePath} (Debian package chromium; scripts/setup.sh `
      + `installs it): ${err.message}`);
  }
  browser.on('disconnected', () => {
    if (!stopping) fatal('chromium exited');
  });
  output.write({
    type: 'ready', pid: process.pid, url: `http://127.0.0.1:${server.address().port}`,
    browser: browser.version(),
  });
}

async function open(viewer) {
  const config = viewerConfig(viewer, settings);
  if (pages.has(config.id)) throw new Error(`viewer ${config.id} is already open`);
  const context = await browser.newContext();
  const page = await context.newPage();
  pages.set(config.id, { context, page });
  // The page reports through this binding; the Node side stamps the receive time.
  await page.exposeFunction('turnoutReport', (record) => output.write(record));
  page.on('pageerror', (err) => output.write({ type: 'page_error', client: config.id, message: String(err) }));
  page.on('console', (message) => {
    if (message.type() === 'error' || message.type() === 'warning') {
      process.stderr.write(`[${config.id}] ${message.type()}: ${message.text()}\n`);
    }
  });
  const { port } = server.address();
  await page.goto(`http://127.0.0.1:${port}/page.html#${encodeURIComponent(JSON.stringify(config))}`);
}

async function stats() {
  for (const [client, { page }] of pages) {
    const value = await page.evaluate(() => window.turnoutViewer?.stats() ?? null);
    output.write({ type: 'stats', client, stats: value });
  }
}

async function stop() {
  if (stopping) return;
  stopping = true;
  for (const { page } of pages.values()) {
    await page.evaluate(() => window.turnoutViewer?.close()).catch(() => {});
  }
  await browser?.close().catch(() => {});
  server?.close();
  output.write({ type: 'done', viewers: pages.size });
  output.end(() => process.exit(0));
}

let queue = start().catch((err) => fatal(String(err?.message ?? err)));
readCommands((command) => {
  queue = queue.then(async () => {
    switch (command.op) {
      case 'open': return open(command.viewer);
      case 'open_many':
        for (let i = 0; i < Number(command.count); i += 1) await open({ ...command.viewer, id: `${command.viewer.id}-${i}` });
        return undefined;
      case 'stats': return stats();
      case 'stop': return stop();
      default: throw new Error(`unknown command ${JSON.stringify(command)}`);
    }
  }).catch((err) => fatal(String(err?.stack ?? err)));
}, () => queue.then(stop));

process.on('SIGTERM', () => { stop(); });
