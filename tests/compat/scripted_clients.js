#!/usr/bin/env node
// Real pusher-js and Laravel Echo clients, driven by a test: one JSON command per line on
// stdin, one JSON line per thing a client's callbacks report on stdout. Used by
// tests/server/test_real_clients.py against a two-node turnout cluster.
//
// Commands ({"op": ..., "name": client name, ...}):
//   pusher  {port, auth_url}          a pusher-js client (channel and user authentication by
//                                     POSTing {socket_id, channel_name | -, user_id} to auth_url)
//   echo    {port, auth_url}          a Laravel Echo client (pusher broadcaster) over pusher-js
//   subscribe {channel, user_id?, bind?}  pusher-js: subscribe, report succeeded/members/events
//                                     (and, for the names in bind, each with its metadata)
//   trigger {channel, event, data}    pusher-js: a client event
//   signin  {user_id, watchlist?}     pusher-js: pusher.signin(); report signed_in, user events,
//                                     watchlist online/offline
//   join    {channel, user_id}        Echo: join().here().joining().leaving()
//                                     .listenForWhisper('typing').error()
//   private {channel, user_id}        Echo: private().listenForWhisper('typing').error()
//   public  {channel}                 Echo: channel().listen('.update').error()
//   whisper {channel, kind, data}     Echo: join()/private() .whisper('typing', data)
//   leave   {channel}                 Echo: leave()
//   disconnect {}                     either: disconnect
// Reports: {"type": ..., "name": ..., ...}; "ready" once per command done.
'use strict';

const readline = require('node:readline');

let Pusher;
let Echo; // laravel-echo 2.5 is an ES module (its CommonJS build does not load in Node)
try {
  Pusher = require('pusher-js');
} catch (err) {
  process.stderr.write(`cannot load pusher-js (${err.message}): run scripts/setup.sh\n`);
  process.exit(1);
}
Pusher.log = (message) => process.stderr.write(`${message}\n`);

const clients = new Map(); // name -> {pusher, echo?, userId}

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function post(url, body) {
  return fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  }).then(async (response) => {
    if (!response.ok) throw new Error(`auth endpoint answered ${response.status}`);
    return response.json();
  });
}

function options(name, cmd) {
  const state = clients.get(name);
  return {
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: Number(cmd.port),
    forceTLS: false,
    enabledTransports: ['ws'],
    enableStats: false,
    channelAuthorization: {
      customHandler: (params, callback) => {
        post(cmd.auth_url, {
          socket_id: params.socketId, channel_name: params.channelName,
          user_id: state.userId,
        }).then((body) => callback(null, body), (err) => callback(err, null));
      },
    },
    userAuthentication: {
      customHandler: (params, callback) => {
        post(cmd.auth_url, { socket_id: params.socketId, user_id: state.userId, signin: true,
          watchlist: state.watchlist })
          .then((body) => callback(null, body), (err) => callback(err, null));
      },
    },
  };
}

function watchConnection(name, pusher) {
  pusher.connection.bind('state_change', (states) => {
    emit({ type: 'state', name, previous: states.previous, current: states.current });
  });
  pusher.connection.bind('connected', () => {
    emit({ type: 'connected', name, socket_id: pusher.connection.socket_id });
  });
  pusher.connection.bind('error', (err) => {
    let error;
    try {
      error = JSON.parse(JSON.stringify(err));
    } catch (e) {
      error = String(err);
    }
    emit({ type: 'connection_error', name, error });
  });
}

function membersOf(members) {
  const out = {};
  members.each((member) => { out[member.id] = member.info; });
  return out;
}

const ops = {
  pusher(cmd) {
    clients.set(cmd.name, { userId: null });
    const pusher = new Pusher('turnout-key', options(cmd.name, cmd));
    clients.get(cmd.name).pusher = pusher;
    watchConnection(cmd.name, pusher);
  },
  echo(cmd) {
    clients.set(cmd.name, { userId: null });
    const echo = new Echo({ broadcaster: 'pusher', key: 'turnout-key', Pusher,
      ...options(cmd.name, cmd) });
    clients.get(cmd.name).echo = echo;
    clients.get(cmd.name).pusher = echo.connector.pusher;
    watchConnection(cmd.name, echo.connector.pusher);
  },
  subscribe(cmd) {
    const state = clients.get(cmd.name);
    if (cmd.user_id) state.userId = cmd.user_id;
    const channel = state.pusher.subscribe(cmd.channel);
    const name = cmd.name;
    channel.bind('pusher:subscription_succeeded', (data) => {
      const report = { type: 'subscribed', name, channel: cmd.channel };
      if (channel.members) {
        report.members = membersOf(channel.members);
        report.me = channel.members.me;
      }
      emit(report);
    });
    channel.bind('pusher:subscription_error', (error) => {
      emit({ type: 'subscription_error', name, channel: cmd.channel, error });
    });
    channel.bind('pusher:member_added', (member) => {
      emit({ type: 'member_added', name, channel: cmd.channel, member,
        members: membersOf(channel.members) });
    });
    channel.bind('pusher:member_removed', (member) => {
      emit({ type: 'member_removed', name, channel: cmd.channel, member,
        members: membersOf(channel.members) });
    });
    channel.bind_global((event, data) => {
      if (event.startsWith('pusher:')) return;
      emit({ type: 'event', name, channel: cmd.channel, event, data });
    });
    // Per-event callbacks also get the metadata (user_id of a presence client event).
    for (const event of cmd.bind || []) {
      channel.bind(event, (data, metadata) => {
        emit({ type: 'bound', name, channel: cmd.channel, event, data, metadata });
      });
    }
  },
  trigger(cmd) {
    const ok = clients.get(cmd.name).pusher.channel(cmd.channel).trigger(cmd.event, cmd.data);
    emit({ type: 'triggered', name: cmd.name, ok });
  },
  signin(cmd) {
    const state = clients.get(cmd.name);
    state.userId = cmd.user_id;
    state.watchlist = cmd.watchlist;
    const pusher = state.pusher;
    for (const kind of ['online', 'offline']) {
      pusher.user.watchlist.bind(kind, (event) => {
        emit({ type: 'watchlist', name: cmd.name, status: kind, user_ids: event.user_ids });
      });
    }
    pusher.user.bind_global((event, data) => {
      emit({ type: 'user_event', name: cmd.name, event, data });
    });
    pusher.user.bind('pusher:signin_error', (error) => {
      emit({ type: 'signin_error', name: cmd.name, error });
    });
    pusher.signin();
    const wait = () => pusher.user.signinDonePromise.then(() => {
      if (pusher.user.user_data) {
        emit({ type: 'signed_in', name: cmd.name, user_data: pusher.user.user_data });
      } else {
        setTimeout(wait, 50);
      }
    });
    wait();
  },
  join(cmd) {
    const state = clients.get(cmd.name);
    state.userId = cmd.user_id;
    const name = cmd.name;
    const channel = cmd.channel;
    state.echo.join(channel)
      .here((users) => emit({ type: 'here', name, channel, users }))
      .joining((user) => emit({ type: 'joining', name, channel, user }))
      .leaving((user) => emit({ type: 'leaving', name, channel, user }))
      .listenForWhisper('typing', (data) => emit({ type: 'whisper', name, channel, data }))
      .error((error) => emit({ type: 'echo_error', name, channel, error }));
  },
  private(cmd) {
    const state = clients.get(cmd.name);
    state.userId = cmd.user_id;
    const name = cmd.name;
    const channel = cmd.channel;
    state.echo.private(channel)
      .subscribed(() => emit({ type: 'echo_subscribed', name, channel }))
      .listenForWhisper('typing', (data) => emit({ type: 'whisper', name, channel, data }))
      .error((error) => emit({ type: 'echo_error', name, channel, error }));
  },
  public(cmd) {
    const name = cmd.name;
    const channel = cmd.channel;
    clients.get(cmd.name).echo.channel(channel)
      .subscribed(() => emit({ type: 'echo_subscribed', name, channel }))
      .listen('.update', (data) => emit({ type: 'echo_event', name, channel, data }))
      .error((error) => emit({ type: 'echo_error', name, channel, error }));
  },
  whisper(cmd) {
    const echo = clients.get(cmd.name).echo;
    const channel = cmd.kind === 'presence' ? echo.join(cmd.channel) : echo.private(cmd.channel);
    channel.whisper('typing', cmd.data);
  },
  leave(cmd) {
    clients.get(cmd.name).echo.leave(cmd.channel);
  },
  disconnect(cmd) {
    clients.get(cmd.name).pusher.disconnect();
  },
};

function start() {
const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
    ops[cmd.op](cmd);
    emit({ type: 'ready', op: cmd.op, name: cmd.name });
  } catch (err) {
    emit({ type: 'script_error', line, error: String(err && err.stack ? err.stack : err) });
  }
});
lines.on('close', () => {
  for (const state of clients.values()) {
    try { state.pusher.disconnect(); } catch (err) { /* closed already */ }
  }
  setTimeout(() => process.exit(0), 100);
});
}

import('laravel-echo').then((module) => {
  Echo = module.default;
  start();
}, (err) => {
  process.stderr.write(`cannot load laravel-echo (${err.message}): run scripts/setup.sh\n`);
  process.exit(1);
});
setTimeout(() => process.exit(3), Number(process.env.SCRIPT_TIMEOUT || 120) * 1000).unref();
