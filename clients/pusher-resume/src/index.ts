/**
 * Resumable subscriptions for pusher-js 8 and Laravel Echo 2 on a turnout cluster.
 *
 *     import { resume } from '@turnout/pusher-resume';
 *     resume(pusher);   // or resume(echo)
 *
 * From then on every (re)subscribe carries the channel's last position, so after any reconnect
 * (network loss, a node drained with 4200, a node killed, a pong timeout) the server replays
 * exactly what was missed; duplicates are dropped by position before the application's handlers
 * see them; epoch changes are followed; and when the server answers `recovered: false` the
 * application is told which channel and how big the gap is, so it can refetch its state.
 *
 * Against a server that does not send positions (Pusher, Soketi, Reverb) it changes nothing.
 */

import { filterFrames, type RawMessage } from './internals.js';
import { type Gap, type Position, PositionTracker, type ResumeStats } from './tracker.js';

export type { Gap, GapReason, Position, ResumeStats } from './tracker.js';

/** The parts of a pusher-js 8 `Pusher` instance this package uses (public API only). */
export interface PusherLike {
  connection: {
    state: string;
    bind(eventName: string, callback: (...args: any[]) => void, context?: any): unknown;
    unbind(eventName?: string, callback?: (...args: any[]) => void, context?: any): unknown;
  };
  send_event(eventName: string, data: any, channel?: string): boolean;
  unsubscribe(channelName: string): void;
  channel(channelName: string): { emit(eventName: string, data?: any): unknown } | null | undefined;
}

/** A Laravel Echo 2 instance with the `pusher` or `reverb` broadcaster. */
export interface EchoLike {
  connector: { pusher: PusherLike };
}

/** A channel event as it reached the application, with its position. */
export interface Delivery {
  readonly channel: string;
  readonly event: string;
  readonly offset: number;
  readonly epoch: string;
}

export interface ResumeOptions {
  /** Called when a resume came back `recovered: false`: refetch the channel's state. */
  onGap?: (gap: Gap) => void;
  /**
   * Name of the event also emitted on the channel itself for a gap, so `channel.bind(name)`
   * (pusher-js) or `.listen('.' + name)` (Echo) sees it; `false` to emit none.
   * Default `'turnout:gap'`.
   */
  gapEvent?: string | false;
}

export interface ResumeHandle {
  /** The pusher-js instance being tracked (Echo's `connector.pusher` for Echo). */
  readonly pusher: PusherLike;
  /** The last position of a channel (its last event processed), if it has one. */
  position(channel: string): Position | undefined;
  /** Every channel's last position (a copy). */
  positions(): Map<string, Position>;
  /** Counters since resume() (a copy). */
  stats(): ResumeStats;
  /** Listen for gaps (`recovered: false`). Returns a function that removes the listener. */
  on(event: 'gap', listener: (gap: Gap) => void): () => void;
  /**
   * Listen for every channel event that reached the application, right after its handlers
   * ran, with its position. Returns a function that removes the listener.
   */
  on(event: 'delivery', listener: (delivery: Delivery) => void): () => void;
  /** Undo everything resume() did; positions are forgotten. */
  detach(): void;
}

const HANDLE = Symbol.for('turnout.pusher-resume.handle');
const DEFAULT_GAP_EVENT = 'turnout:gap';

type Listener<T> = (value: T) => void;

function isEcho(target: unknown): target is EchoLike {
  const connector = (target as { connector?: { pusher?: unknown } } | null)?.connector;
  return typeof connector === 'object' && connector !== null && isPusher(connector.pusher);
}

function isPusher(target: unknown): target is PusherLike {
  const candidate = target as Partial<PusherLike> | null;
  return (
    typeof candidate === 'object' &&
    candidate !== null &&
    typeof candidate.send_event === 'function' &&
    typeof candidate.unsubscribe === 'function' &&
    typeof candidate.connection === 'object' &&
    candidate.connection !== null &&
    typeof candidate.connection.bind === 'function'
  );
}

/** Report a throwing listener without breaking pusher-js's frame processing. */
function callSafely<T>(listener: Listener<T>, value: T): void {
  try {
    listener(value);
  } catch (err) {
    setTimeout(() => {
      throw err;
    }, 0);
  }
}

/**
 * Make a pusher-js 8 instance, or a Laravel Echo 2 instance using the pusher/reverb
 * broadcaster, resume its subscriptions. Call it right after creating the instance (before it
 * connects is ideal; later works, but positions start with the next event of each channel).
 * Calling it again on the same instance returns the same handle.
 */
export function resume(target: PusherLike | EchoLike, options: ResumeOptions = {}): ResumeHandle {
  let pusher: PusherLike;
  if (isEcho(target)) pusher = target.connector.pusher;
  else if (isPusher(target)) pusher = target;
  else {
    throw new TypeError(
      'resume() takes a pusher-js 8 instance or a Laravel Echo 2 instance whose broadcaster ' +
        "is 'pusher' or 'reverb' (echo.connector.pusher)",
    );
  }
  const existing = (pusher as unknown as { [HANDLE]?: ResumeHandle })[HANDLE];
  if (existing !== undefined) return existing;

  const tracker = new PositionTracker();
  const gapListeners = new Set<Listener<Gap>>();
  const deliveryListeners = new Set<Listener<Delivery>>();
  if (options.onGap) gapListeners.add(options.onGap);
  const gapEvent = options.gapEvent === undefined ? DEFAULT_GAP_EVENT : options.gapEvent;
  let unhookTransport: (() => void) | null = null;
  let warned = false;

  function announceGap(gap: Gap): void {
    for (const listener of [...gapListeners]) callSafely(listener, gap);
    if (gapEvent !== false) pusher.channel(gap.channel)?.emit(gapEvent, gap);
  }

  function onFrame(message: RawMessage): boolean | (() => void) {
    if (typeof message.data !== 'string') return true;
    let frame: unknown;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return true; // pusher-js reports undecodable frames itself
    }
    const verdict = tracker.onFrame(frame);
    if (!verdict.deliver) return false;
    if (verdict.gap !== undefined) {
      const gap = verdict.gap;
      return () => announceGap(gap);
    }
    if (deliveryListeners.size === 0) return true;
    const { channel, event, offset, epoch } = frame as Record<string, unknown>;
    if (typeof offset !== 'number' || typeof epoch !== 'string') return true;
    if (typeof event !== 'string' || event.startsWith('pusher')) return true;
    const delivery: Delivery = { channel: channel as string, event, offset, epoch };
    return () => {
      for (const listener of [...deliveryListeners]) callSafely(listener, delivery);
    };
  }

  function onConnected(): void {
    unhookTransport?.();
    unhookTransport = filterFrames(pusher.connection, onFrame);
    if (unhookTransport === null && !warned) {
      warned = true;
      console.warn(
        '@turnout/pusher-resume: this pusher-js version has no transport in the expected shape; ' +
          'subscriptions will not resume (supported: pusher-js 8.x)',
      );
    }
  }

  function onStateChange(states: { current?: string }): void {
    if (states.current !== 'connected') {
      tracker.onDisconnect();
      unhookTransport?.();
      unhookTransport = null;
    }
  }

  // Every subscribe goes through send_event (Channel.subscribe, after authorization).
  const originalSendEvent = pusher.send_event;
  pusher.send_event = function sendEvent(this: unknown, eventName, data, channel) {
    if (eventName === 'pusher:subscribe' && data !== null && typeof data === 'object') {
      const name = (data as { channel?: unknown }).channel;
      if (typeof name === 'string') {
        const position = tracker.onSubscribe(name);
        if (position !== undefined) {
          data = { ...data, offset: position.offset, epoch: position.epoch };
        }
      }
    }
    return originalSendEvent.call(this, eventName, data, channel);
  };
  const originalUnsubscribe = pusher.unsubscribe;
  pusher.unsubscribe = function unsubscribe(this: unknown, channelName) {
    tracker.forget(channelName);
    return originalUnsubscribe.call(this, channelName);
  };
  pusher.connection.bind('state_change', onStateChange);
  pusher.connection.bind('connected', onConnected);
  if (pusher.connection.state === 'connected') onConnected();

  const handle: ResumeHandle = {
    pusher,
    position: (channel) => tracker.position(channel),
    positions: () => tracker.snapshot(),
    stats: () => ({ ...tracker.stats }),
    on(event: 'gap' | 'delivery', listener: Listener<any>): () => void {
      const listeners = event === 'gap' ? gapListeners : event === 'delivery' ? deliveryListeners : null;
      if (listeners === null) throw new TypeError(`unknown event ${String(event)}: 'gap' or 'delivery'`);
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    detach() {
      pusher.connection.unbind('state_change', onStateChange);
      pusher.connection.unbind('connected', onConnected);
      unhookTransport?.();
      unhookTransport = null;
      if (pusher.send_event !== originalSendEvent) {
        delete (pusher as Partial<PusherLike>).send_event; // back to the prototype's
        if (pusher.send_event !== originalSendEvent) pusher.send_event = originalSendEvent;
      }
      if (pusher.unsubscribe !== originalUnsubscribe) {
        delete (pusher as Partial<PusherLike>).unsubscribe;
        if (pusher.unsubscribe !== originalUnsubscribe) pusher.unsubscribe = originalUnsubscribe;
      }
      gapListeners.clear();
      deliveryListeners.clear();
      delete (pusher as unknown as { [HANDLE]?: ResumeHandle })[HANDLE];
    },
  } as ResumeHandle;
  (pusher as unknown as { [HANDLE]?: ResumeHandle })[HANDLE] = handle;
  return handle;
}

export default resume;
