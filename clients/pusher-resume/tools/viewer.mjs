// One viewer: a pusher-js (or Laravel Echo) client as an application would write it, with or
// without resume(), reporting what the application saw. The same module runs in a browser page
// (tools/page/) and in Node (tools/node-fleet.mjs); it touches neither DOM nor Node APIs.
//
// Reports (plain objects, handed to `report`):
//   {type: 'state', client, previous, current}            pusher.connection state changes
//   {type: 'error', client, code}                          a close/error code pusher-js reported
//   {type: 'subscribed', client, channel}                  pusher:subscription_succeeded
//   {type: 'subscription_error', client, channel, status}
//   {type: 'delivery', client, channel, event, id, offset, epoch}
//        every event the application's handler saw; `id` is data.id of the published payload;
//        offset/epoch come from resume()'s delivery listener (null without the plugin)
//   {type: 'gap', client, gap}                              resume() reported recovered: false
//   {type: 'stats', client, stats}                          resume()'s counters, on request

/**
 * @param {object} deps
 * @param {Function} deps.Pusher       the pusher-js constructor
 * @param {Function|null} deps.Echo    the laravel-echo constructor (config.client === 'echo')
 * @param {Function|null} deps.resume  the plugin's resume(), or null for "plugin off"
 * @param {object} deps.config         {id, client, key, wsHost, wsPort, channels, auth}
 *   auth: {endpoint} (pusher-js's own XHR authorizer) or {customHandler} (pusher-js's hook)
 * @param {(record: object) => void} deps.report
 * @returns {{stats(): object|null, close(): void}}
 */
export function startViewer({ Pusher, Echo, resume, config, report }) {
  const client = config.id;
  const options = {
    cluster: 'mt1', // required by pusher-js 8; wsHost/wsPort decide where it connects
    wsHost: config.wsHost,
    wsPort: config.wsPort,
    forceTLS: false,
    enabledTransports: ['ws'],
    enableStats: false,
  };
  if (config.auth?.endpoint) options.channelAuthorization = { endpoint: config.auth.endpoint, transport: 'ajax' };
  if (config.auth?.customHandler) options.channelAuthorization = { customHandler: config.auth.customHandler };

  let echo = null;
  let pusher;
  if (config.client === 'echo') {
    if (!Echo) throw new Error(`viewer ${client}: client 'echo' needs laravel-echo`);
    const echoOptions = { broadcaster: 'pusher', key: config.key, Pusher, ...options };
    if (config.auth?.endpoint) echoOptions.authEndpoint = config.auth.endpoint;
    echo = new Echo(echoOptions);
    pusher = echo.connector.pusher;
  } else {
    pusher = new Pusher(config.key, options);
  }
  const handle = resume ? resume(echo ?? pusher) : null;

  // The application's handlers record an event; resume()'s delivery listener, which runs right
  // after them for the same frame, adds its position.
  let pending = null;
  const emit = (record) => {
    if (record.reported) return;
    record.reported = true;
    const { reported, ...rest } = record;
    report(rest);
  };
  function onEvent(channel, event, data) {
    const id = data !== null && typeof data === 'object' ? data.id ?? null : null;
    const record = { type: 'delivery', client, channel, event, id, offset: null, epoch: null };
    if (handle === null) {
      emit(record);
      return;
    }
    pending = record;
    queueMicrotask(() => emit(record)); // a frame without a position gets no delivery callback
  }
  if (handle !== null) {
    handle.on('delivery', (delivery) => {
      const record = pending;
      pending = null;
      if (record === null || record.channel !== delivery.channel) return;
      record.offset = delivery.offset;
      record.epoch = delivery.epoch;
      emit(record);
    });
    handle.on('gap', (gap) => report({ type: 'gap', client, gap }));
  }

  pusher.connection.bind('state_change', ({ previous, current }) => {
    report({ type: 'state', client, previous, current });
  });
  pusher.connection.bind('error', (error) => {
    const code = error?.data?.code ?? error?.error?.data?.code ?? null;
    report({ type: 'error', client, code });
  });

  for (const channelName of config.channels) {
    let channel;
    if (echo !== null) {
      const isPrivate = channelName.startsWith('private-');
      const echoChannel = isPrivate
        ? echo.private(channelName.slice('private-'.length))
        : echo.channel(channelName);
      echoChannel.listen('.update', (data) => onEvent(channelName, 'update', data));
      channel = echoChannel.subscription;
    } else {
      channel = pusher.subscribe(channelName);
      channel.bind('update', (data) => onEvent(channelName, 'update', data));
    }
    channel.bind('pusher:subscription_succeeded', () => {
      report({ type: 'subscribed', client, channel: channelName });
    });
    channel.bind('pusher:subscription_error', (error) => {
      report({ type: 'subscription_error', client, channel: channelName, status: error?.status ?? null });
    });
  }

  return {
    stats: () => (handle ? handle.stats() : null),
    close: () => (echo ? echo.disconnect() : pusher.disconnect()),
  };
}
