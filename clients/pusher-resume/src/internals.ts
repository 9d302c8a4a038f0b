/**
 * The one pusher-js internal this package relies on, isolated here and pinned by
 * test/internals.test.mjs against the oldest and newest pusher-js 8.x it claims.
 *
 * Why an internal is needed at all: pusher-js 8 decodes each frame into a new object that
 * keeps only `event`, `channel`, `data` and `user_id` (Protocol.decodeMessage), so `offset`,
 * `epoch` and `recovered` never reach `bind`, `bind_global` or `connection.bind('message')`.
 * And duplicates must be dropped *before* pusher-js dispatches them to the application's
 * handlers. Both need the raw frame before pusher-js sees it, which only the transport has.
 *
 * What is relied on (pusher-js 8.2.0 through 8.6.0, the range package.json claims):
 *   - `pusher.connection.connection` is the live Connection once the ConnectionManager
 *     is `connected`, and `.transport` is its TransportConnection;
 *   - a TransportConnection hands each received websocket message to its listeners through
 *     its own `emit('message', {data: string})` (TransportConnection.onMessage), so an own
 *     `emit` property on the instance sees every frame before the Connection decodes it.
 */

export interface RawMessage {
  data?: unknown;
}

/** The subset of pusher-js's TransportConnection this package touches. */
interface TransportLike {
  emit: (event: string, data?: unknown) => unknown;
}

interface ConnectionManagerInternals {
  connection?: { transport?: TransportLike | null } | null;
}

/**
 * Decides, given the raw websocket message, whether pusher-js may see it: `false` drops it,
 * `true` passes it on, a function passes it on and is called once pusher-js has dispatched it
 * (to the application's handlers, synchronously).
 */
export type FrameFilter = (message: RawMessage) => boolean | (() => void);

const HOOKED = Symbol.for('turnout.pusher-resume.transport-hook');

interface HookedTransport extends TransportLike {
  [HOOKED]?: { filter: FrameFilter; original: TransportLike['emit']; own: boolean };
}

/** The current transport of a connected pusher-js instance, or null if there is none. */
function currentTransport(connectionManager: unknown): HookedTransport | null {
  const connection = (connectionManager as ConnectionManagerInternals).connection;
  const transport = connection?.transport;
  if (transport === null || transport === undefined || typeof transport.emit !== 'function') {
    return null;
  }
  return transport as HookedTransport;
}

/**
 * Put `filter` in front of the current transport's 'message' listeners. Returns a function
 * that takes it out again, or null when the connection has no transport in the expected shape
 * (a pusher-js this package does not support).
 */
export function filterFrames(connectionManager: unknown, filter: FrameFilter): (() => void) | null {
  const transport = currentTransport(connectionManager);
  if (transport === null) return null;
  const existing = transport[HOOKED];
  if (existing !== undefined) {
    existing.filter = filter;
    return () => unhook(transport);
  }
  const original = transport.emit;
  const hook = { filter, original, own: Object.prototype.hasOwnProperty.call(transport, 'emit') };
  transport[HOOKED] = hook;
  transport.emit = function emit(this: unknown, event: string, data?: unknown) {
    if (event !== 'message') return original.call(this, event, data);
    const verdict = hook.filter((data ?? {}) as RawMessage);
    if (verdict === false) return transport;
    const result = original.call(this, event, data);
    if (typeof verdict === 'function') verdict();
    return result;
  };
  return () => unhook(transport);
}

function unhook(transport: HookedTransport): void {
  const hook = transport[HOOKED];
  if (hook === undefined) return;
  if (hook.own) transport.emit = hook.original;
  else delete (transport as Partial<TransportLike>).emit; // back to the prototype's
  delete transport[HOOKED];
}

/** True if `connectionManager` currently has a transport this package can filter. */
export function hasFilterableTransport(connectionManager: unknown): boolean {
  return currentTransport(connectionManager) !== null;
}
