// A Pusher-protocol websocket server whose every answer is scripted by the test: it sends
// pusher:connection_established, answers pusher:ping (unless told not to), and queues whatever
// the client sends for the test to await. Frames carry turnout's positions only when the test
// puts them there. Listens on 127.0.0.1, an ephemeral port.
import { WebSocketServer } from 'ws';

const DEFAULT_TIMEOUT_MS = 10000; // generous: CI shares two cores

let socketCounter = 0;

/** One client connection as the test sees it. */
export class ScriptedConnection {
  constructor(ws) {
    this.ws = ws;
    socketCounter += 1;
    this.socketId = `${1000 + socketCounter}.${socketCounter * 7}`;
    this.answerPings = true;
    this.received = []; // every parsed client message, in order
    this.queue = []; // not yet taken by next()
    this.waiters = [];
    this.closed = new Promise((resolve) => ws.once('close', resolve));
    ws.on('message', (raw) => this.onMessage(raw));
    this.send({
      event: 'pusher:connection_established',
      data: JSON.stringify({ socket_id: this.socketId, activity_timeout: 120 }),
    });
  }

  onMessage(raw) {
    let message;
    try {
      message = JSON.parse(String(raw));
    } catch {
      message = { event: '(unparsable)', raw: String(raw) };
    }
    this.received.push(message);
    if (message.event === 'pusher:ping') {
      if (this.answerPings) this.send({ event: 'pusher:pong', data: '{}' });
      return;
    }
    this.queue.push(message);
    this.wake();
  }

  wake() {
    for (const waiter of [...this.waiters]) {
      const index = this.queue.findIndex(waiter.match);
      if (index >= 0) {
        const [message] = this.queue.splice(index, 1);
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        clearTimeout(waiter.timer);
        waiter.resolve(message);
      }
    }
  }

  /** The next client message named `event` (optionally for `channel`). */
  next(event, { channel, timeout = DEFAULT_TIMEOUT_MS } = {}) {
    const match = (m) => m.event === event && (channel === undefined || m.data?.channel === channel);
    return new Promise((resolve, reject) => {
      const waiter = { match, resolve };
      waiter.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`no ${event}${channel ? ` for ${channel}` : ''} from the client within `
          + `${timeout} ms; it sent: ${JSON.stringify(this.received)}`));
      }, timeout);
      this.waiters.push(waiter);
      this.wake();
    });
  }

  /** Wait for the subscribe of `channel` and return its data. */
  async subscription(channel, options) {
    return (await this.next('pusher:subscribe', { channel, ...options })).data;
  }

  send(frame) {
    this.ws.send(JSON.stringify(frame));
  }

  /** pusher_internal:subscription_succeeded with turnout's position fields. */
  subscribed(channel, { offset, epoch, recovered } = {}) {
    const frame = { event: 'pusher_internal:subscription_succeeded', channel, data: '{}' };
    if (offset !== undefined) frame.offset = offset;
    if (epoch !== undefined) frame.epoch = epoch;
    if (recovered !== undefined) frame.recovered = recovered;
    this.send(frame);
  }

  /** A channel event; `position` is [offset, epoch] or null for a non-sequencing server. */
  event(channel, name, data, position) {
    const frame = { event: name, channel, data: JSON.stringify(data) };
    if (position) [frame.offset, frame.epoch] = position;
    this.send(frame);
  }

  /** A clean close with a Pusher close code (4200: reconnect at once; 4100: back off). */
  close(code = 4200, reason = 'scripted close') {
    this.ws.close(code, reason);
    return this.closed;
  }

  /** Drop the TCP connection without a close frame, as a killed node does. */
  kill() {
    this.ws.terminate();
    return this.closed;
  }
}

export async function startScriptedServer() {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve, reject) => {
    wss.once('listening', resolve);
    wss.once('error', reject);
  });
  const connections = [];
  const pending = [];
  const waiters = [];
  wss.on('connection', (ws, request) => {
    const connection = new ScriptedConnection(ws);
    connection.url = request.url;
    connections.push(connection);
    const waiter = waiters.shift();
    if (waiter) {
      clearTimeout(waiter.timer);
      waiter.resolve(connection);
    } else {
      pending.push(connection);
    }
  });
  return {
    port: wss.address().port,
    connections,
    /** The next websocket connection (already sent connection_established). */
    nextConnection(timeout = DEFAULT_TIMEOUT_MS) {
      const ready = pending.shift();
      if (ready) return Promise.resolve(ready);
      return new Promise((resolve, reject) => {
        const waiter = { resolve };
        waiter.timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(waiter), 1);
          reject(new Error(`no websocket connection within ${timeout} ms`));
        }, timeout);
        waiters.push(waiter);
      });
    },
    async close() {
      for (const client of wss.clients) client.terminate();
      await new Promise((resolve) => wss.close(resolve));
    },
  };
}
