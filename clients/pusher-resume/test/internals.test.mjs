// Pins the one pusher-js internal this package relies on (src/internals.ts) for the oldest and
// newest pusher-js 8.x it claims, so a release that moves it fails here by name.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { PUSHER_VERSIONS, connected, pusherOptions, waitFor } from './support/clients.mjs';
import { startScriptedServer } from './support/scripted-server.mjs';

for (const { name, Pusher } of PUSHER_VERSIONS) {
  describe(name, () => {
    test('connection.connection.transport is the live transport and emits every frame through its own emit()', async (t) => {
      const server = await startScriptedServer();
      const pusher = new Pusher('app-key', pusherOptions(server.port));
      t.after(async () => {
        pusher.disconnect();
        await server.close();
      });
      const conn = await server.nextConnection();
      await connected(pusher);
      const transport = pusher.connection.connection?.transport;
      assert.ok(transport, 'pusher.connection.connection.transport exists once connected');
      assert.equal(typeof transport.emit, 'function');
      assert.equal(Object.prototype.hasOwnProperty.call(transport, 'emit'), false,
        'emit comes from the prototype (an own property shadows it for this instance only)');

      const raw = [];
      const original = transport.emit;
      transport.emit = function emit(event, data) {
        if (event === 'message') raw.push(data.data);
        return original.call(this, event, data);
      };
      const decoded = [];
      pusher.connection.bind('message', (message) => decoded.push(message));
      const frame = { event: 'update', channel: 'c', data: '{"id":1}', offset: 1, epoch: 'e' };
      conn.send(frame);
      await waitFor(() => decoded.length === 1, 'the decoded message');
      assert.deepEqual(raw.map((text) => JSON.parse(text)), [frame], 'the raw frame, positions included');
      // And the reason the internal is needed: the decoded message drops the positions.
      assert.equal(decoded[0].offset, undefined);
      assert.equal(decoded[0].epoch, undefined);
    });

    test('every subscribe goes through pusher.send_event with {channel} in its data', async (t) => {
      const server = await startScriptedServer();
      const pusher = new Pusher('app-key', pusherOptions(server.port));
      t.after(async () => {
        pusher.disconnect();
        await server.close();
      });
      const sent = [];
      const original = pusher.send_event;
      pusher.send_event = function sendEvent(event, data, channel) {
        sent.push([event, data.channel]);
        return original.call(this, event, data, channel);
      };
      pusher.subscribe('before-connect');
      const conn = await server.nextConnection();
      await conn.subscription('before-connect');
      pusher.subscribe('after-connect');
      await conn.subscription('after-connect');
      await conn.close(4200);
      const again = await server.nextConnection();
      await again.subscription('before-connect');
      await again.subscription('after-connect');
      assert.deepEqual(sent.filter(([event]) => event === 'pusher:subscribe'), [
        ['pusher:subscribe', 'before-connect'], ['pusher:subscribe', 'after-connect'],
        ['pusher:subscribe', 'before-connect'], ['pusher:subscribe', 'after-connect'],
      ]);
    });
  });
}
