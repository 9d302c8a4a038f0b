// resume(echo) on the oldest and newest Laravel Echo 2.x claimed, each over pusher-js: the
// one-line adoption for Echo apps, private channels and the gap event through Echo's listen().
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { resume } from '@turnout/pusher-resume';

import { ECHO_VERSIONS, PUSHER_VERSIONS, pusherOptions, waitFor } from './support/clients.mjs';
import { startScriptedServer } from './support/scripted-server.mjs';

// Oldest Echo with the oldest pusher-js, newest with newest.
const PAIRS = ECHO_VERSIONS.map((echo, i) => ({ ...echo, pusher: PUSHER_VERSIONS[i] }));

for (const { name, Echo, pusher: { name: pusherName, Pusher } } of PAIRS) {
  describe(`${name} on ${pusherName}`, () => {
    test('resume(echo) resumes public and private channels and reports gaps through listen()', async (t) => {
      const server = await startScriptedServer();
      const authorized = [];
      const echo = new Echo({
        broadcaster: 'pusher',
        key: 'app-key',
        Pusher,
        ...pusherOptions(server.port),
        channelAuthorization: {
          customHandler: ({ socketId, channelName }, callback) => {
            authorized.push(channelName);
            callback(null, { auth: `app-key:signed-${socketId}` });
          },
        },
      });
      t.after(async () => {
        echo.disconnect();
        await server.close();
      });
      const handle = resume(echo);
      assert.equal(handle.pusher, echo.connector.pusher);

      const results = [];
      const orders = [];
      const gaps = [];
      echo.channel('results')
        .listen('.update', (data) => results.push(data.id))
        .listen('.turnout:gap', (gap) => gaps.push(gap));
      echo.private('orders').listen('.update', (data) => orders.push(data.id));

      const first = await server.nextConnection();
      for (const [channel, epoch] of [['results', 'r'], ['private-orders', 'o']]) {
        const data = await first.subscription(channel);
        assert.equal(data.offset, undefined);
        first.subscribed(channel, { offset: 0, epoch });
        first.event(channel, 'update', { id: 1 }, [1, epoch]);
        first.event(channel, 'update', { id: 2 }, [2, epoch]);
      }
      await waitFor(() => results.length === 2 && orders.length === 2, 'two events per channel');
      await first.close(4200);

      const second = await server.nextConnection();
      const resumedResults = await second.subscription('results');
      const resumedOrders = await second.subscription('private-orders');
      assert.deepEqual([resumedResults.offset, resumedResults.epoch], [2, 'r']);
      assert.deepEqual([resumedOrders.offset, resumedOrders.epoch], [2, 'o']);
      assert.equal(resumedOrders.auth, `app-key:signed-${second.socketId}`);
      assert.deepEqual(authorized, ['private-orders', 'private-orders']);

      second.subscribed('private-orders', { offset: 3, epoch: 'o', recovered: true });
      second.event('private-orders', 'update', { id: 2 }, [2, 'o']); // duplicate: dropped
      second.event('private-orders', 'update', { id: 3 }, [3, 'o']);
      second.subscribed('results', { offset: 9, epoch: 'r', recovered: false });
      second.event('results', 'update', { id: 10 }, [10, 'r']);
      await waitFor(() => results.length === 3 && orders.length === 3, 'the resumed events');
      assert.deepEqual(orders, [1, 2, 3]);
      assert.deepEqual(results, [1, 2, 10]);
      assert.deepEqual(gaps, [{
        channel: 'results', reason: 'not_recoverable',
        from: { offset: 2, epoch: 'r' }, to: { offset: 9, epoch: 'r' }, missed: 7,
      }]);
    });

    test('echo.leave() forgets the position', async (t) => {
      const server = await startScriptedServer();
      const echo = new Echo({ broadcaster: 'pusher', key: 'app-key', Pusher, ...pusherOptions(server.port) });
      t.after(async () => {
        echo.disconnect();
        await server.close();
      });
      const handle = resume(echo);
      const seen = [];
      echo.channel('results').listen('.update', (data) => seen.push(data.id));
      const first = await server.nextConnection();
      await first.subscription('results');
      first.subscribed('results', { offset: 4, epoch: 'r' });
      first.event('results', 'update', { id: 5 }, [5, 'r']);
      await waitFor(() => seen.length === 1, 'one event');
      assert.deepEqual(handle.position('results'), { offset: 5, epoch: 'r' });
      echo.leave('results');
      await first.next('pusher:unsubscribe');
      assert.equal(handle.position('results'), undefined);
    });
  });
}
